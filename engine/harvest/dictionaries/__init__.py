"""Sparse dictionaries: load any supported format into one `Dictionary` (base.py), one module per format.

Every format maps onto `Dictionary`:
  W_enc [d_in, L], b_enc [L], b_dec_in [d_in] or None (subtracted from the input),
  threshold [L] or None, activation in {relu, jumprelu, topk, gated, identity},
  k (TopK), an input transform (scale, per-token norm rescale or layer norm),
  and, for the logit lens, W_dec [L, d_out].

Formats (detected from the files, or forced with `kind=`):
* sae-lens folder: `cfg.json` + `sae_weights.safetensors` (standard, jumprelu, topk,
  gated, transcoder, skip_transcoder, jumprelu_transcoder; pre-6.0 configs too);
* sparsify folder: `cfg.json` + `sae.safetensors` (TopK; transcoders skip the b_dec
  subtraction); a checkpoint root with one sub-folder per hookpoint is accepted with
  the hookpoint name;
* Gemma Scope `params.npz` (JumpReLU, no b_dec subtraction);
* `neurons:<d>`: raw neurons, identity encode; a neuron fires where it is > 0;
* SPD run folder (`final_config.yaml` + `model_<step>.pth`): one dictionary per decomposed
  module, firing = causal importance > threshold (spd.py);
* by name, through the HF cache (hub.py): `sae-lens:RELEASE/SAE_ID`, `gemma-scope:RELEASE/SAE_ID`,
  `OWNER/REPO[@REV][:HOOKPOINT]` (or `hf:OWNER/REPO...`).
"""

from __future__ import annotations

from pathlib import Path

from engine.core.errors import UserError
from engine.harvest.dictionaries.base import ACTIVATIONS, Dictionary
from engine.harvest.dictionaries.gemma_scope import load_gemma_scope
from engine.harvest.dictionaries.hub import is_named, load_named
from engine.harvest.dictionaries.sae_lens import load_sae_lens
from engine.harvest.dictionaries.sparsify import load_sparsify
from engine.harvest.dictionaries.spd import is_spd_run, load_spd

__all__ = ["ACTIVATIONS", "Dictionary", "load_dictionary"]


def load_dictionary(path: str, hookpoint: str | None = None, kind: str | None = None, ci_threshold: float = 0.0) -> Dictionary:
    """Load a dictionary from a folder/file; `hookpoint` picks a sub-folder of multi-hookpoint checkpoints
    (or the decomposed module of an SPD run, whose components fire where CI > `ci_threshold`)."""
    if path.startswith("neurons:"):
        try:
            d = int(path.split(":", 1)[1])
        except ValueError:
            raise UserError(f"dictionary {path!r}: write raw neurons as neurons:<width>, e.g. neurons:4096") from None
        return Dictionary(path, "neurons", hookpoint, None, None, None, None, "identity", 0, None, d, d)
    if is_named(path):
        return load_named(path, hookpoint, lambda local, hp: load_dictionary(local, hp, kind, ci_threshold))
    p = Path(path)
    if not p.exists():
        raise UserError(f"dictionary {path} does not exist -- give a sae-lens/sparsify folder, a params.npz, or neurons:<width>")
    if kind == "spd" or (kind is None and is_spd_run(p)):
        return load_spd(p, hookpoint, ci_threshold)
    if p.is_dir() and hookpoint and (p / hookpoint).is_dir() and not (p / "cfg.json").exists():
        p = p / hookpoint
    if kind == "sae_lens" or (kind is None and (p / "sae_weights.safetensors").exists()):
        return load_sae_lens(p)
    if kind == "sparsify" or (kind is None and (p / "sae.safetensors").exists()):
        return load_sparsify(p)
    if p.suffix == ".npz" or (p / "params.npz").exists():
        return load_gemma_scope(p if p.suffix == ".npz" else p / "params.npz")
    subs = sorted(q.name for q in p.iterdir() if q.is_dir()) if p.is_dir() else []
    hint = f" (it has sub-folders {', '.join(subs[:5])}: pass the hookpoint)" if subs else ""
    raise UserError(f"dictionary {path}: unknown format{hint} -- expected cfg.json + sae_weights.safetensors (sae-lens), cfg.json + sae.safetensors (sparsify), params.npz (Gemma Scope) or final_config.yaml + model_<step>.pth (SPD)")
