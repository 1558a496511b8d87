"""EleutherAI sparsify folders: cfg.json + sae.safetensors (TopK; transcoders skip the b_dec subtraction)."""

from __future__ import annotations

from pathlib import Path

from engine.core.errors import UserError
from engine.harvest.dictionaries.base import Dictionary
from engine.harvest.dictionaries.files import need, read_json, read_safetensors


def load_sparsify(p: Path) -> Dictionary:
    cfg = read_json(p / "cfg.json")
    t = read_safetensors(p / "sae.safetensors")
    enc = need(t, "encoder.weight", p)  # [L, d_in]
    L, d_in = enc.shape
    act = cfg.get("activation", "topk")
    if act != "topk":
        raise UserError(f"{p / 'cfg.json'}: sparsify activation {act!r} is not supported -- only topk")
    transcoder = bool(cfg.get("transcode", False))
    return Dictionary(
        path=str(p), kind="sparsify:topk" + (":transcoder" if transcoder else ""), hookpoint=p.name,
        W_enc=enc.T.contiguous(), b_enc=need(t, "encoder.bias", p),
        b_dec_in=None if transcoder else need(t, "b_dec", p), threshold=None, activation="topk",
        k=int(cfg["k"]), W_dec=t["W_dec"].float() if "W_dec" in t else None, d_in=d_in, n_latents=L,
        transcoder=transcoder,
    )
