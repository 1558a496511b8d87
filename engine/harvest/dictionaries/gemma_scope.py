"""Gemma Scope `params.npz` (JumpReLU, no b_dec subtraction)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.core.errors import UserError
from engine.harvest.dictionaries.base import Dictionary
from engine.harvest.dictionaries.files import need


def load_gemma_scope(p: Path) -> Dictionary:
    import numpy as np

    try:
        z = np.load(p)
        t = {k.replace("w_", "W_", 1) if k.startswith("w_") else k: torch.from_numpy(z[k]).float() for k in z.files}
    except Exception as e:  # noqa: BLE001 -- any read failure of a user file becomes one line
        raise UserError(f"{p} is not a readable .npz ({type(e).__name__}) -- re-download it") from None
    W_enc = need(t, "W_enc", p)
    d_in, L = W_enc.shape
    return Dictionary(
        path=str(p), kind="gemma_scope:jumprelu", hookpoint=None, W_enc=W_enc, b_enc=need(t, "b_enc", p),
        b_dec_in=None, threshold=need(t, "threshold", p), activation="jumprelu", k=0,
        W_dec=t.get("W_dec"), d_in=d_in, n_latents=L,
    )
