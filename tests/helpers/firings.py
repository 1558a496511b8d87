"""Reading fixed-slot firings (engine.harvest.firings) back as the sorted list of real ones."""

from __future__ import annotations

import torch


def fired(f) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tok, lat, val) of the non-padding slots of `f`, sorted by (tok, lat)."""
    keep = f.lat >= 0
    tok, lat, val = f.tok[keep], f.lat[keep], f.val[keep]
    order = torch.argsort(tok * (int(lat.max()) + 1 if len(lat) else 1) + lat)
    return tok[order], lat[order], val[order]
