"""The subject model: device choice and loading a HF causal LM with its tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.core.errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here -- use --device cpu")
    return torch.device(name)


def load_model(path: str, device, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    local = Path(path).exists()
    if not local and ("/" not in path or path.startswith((".", "/"))):
        raise UserError(f"model {path} does not exist -- give a local HF model folder or a hub name")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        from huggingface_hub import constants

        if not local and constants.is_offline_mode():  # HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE
            raise UserError(f"model {path} is not in the HF cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set "
                            "-- fetch it once with network access, or point HF_HOME at a cache that has it") from None
        where = "the hub name (and HF_TOKEN for gated models)" if not local else "the folder has config.json, weights and a tokenizer"
        raise UserError(f"model {path} could not be loaded ({' '.join(str(e).split())[:150]}) -- check {where}") from None
    return model.to(device).eval(), tok
