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


def load_model(path: str, device, dtype: str, revision: str | None = None):
    """A local folder or a hub name -> (model, tokenizer, commit). A hub name is first resolved to one commit (at
    `revision` when given: a run's recorded one), and the model and tokenizer are read at that commit, which
    is what a run records (config.json's model_revision); commit is None for a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    local = Path(path).exists()
    if not local and ("/" not in path or path.startswith((".", "/"))):
        raise UserError(f"model {path} does not exist -- give a local HF model folder or a hub name")
    commit = None
    try:
        if not local:  # one commit for every file, even if the repo moves on while the weights download
            from huggingface_hub import hf_hub_download

            from engine.harvest.dictionaries.hub import snapshot_commit

            commit = snapshot_commit(hf_hub_download(path, "config.json", revision=revision))
        pin = {"revision": commit} if commit else {}
        tok = AutoTokenizer.from_pretrained(path, **pin)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **pin)
    except (OSError, ValueError) as e:
        from huggingface_hub import constants

        at = f" at commit {revision}" if revision and not local else ""
        if not local and constants.is_offline_mode():  # HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE
            raise UserError(f"model {path}{at} is not in the HF cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set "
                            "-- fetch it once with network access, or point HF_HOME at a cache that has it") from None
        where = "the hub name (and HF_TOKEN for gated models)" if not local else "the folder has config.json, weights and a tokenizer"
        raise UserError(f"model {path}{at} could not be loaded ({' '.join(str(e).split())[:150]}) -- check {where}") from None
    return model.to(device).eval(), tok, commit
