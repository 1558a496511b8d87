"""JAX state <-> torch HarvestState: same tensor names, so the checkpoint format, the exact merge and
the results writer (engine.harvest.results) are shared with the torch backend."""

from __future__ import annotations

import jax
import numpy as np
import torch

from engine.harvest.state import HarvestState, StateConfig


def to_torch(state: dict, cfg: StateConfig) -> HarvestState:
    """A JAX state (arrays on any device) -> a CPU HarvestState holding the same values."""
    hs = HarvestState(cfg, "cpu")
    host = jax.device_get(state)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in host.items()}
    if set(tensors) != set(hs.tensors()):
        raise ValueError(f"JAX state tensors {sorted(tensors)} do not match the torch state's {sorted(hs.tensors())}")
    hs.load_tensors(tensors)
    return hs


def from_torch(hs: HarvestState) -> dict:
    """A HarvestState -> host numpy arrays named as the JAX state (place them with jax.device_put)."""
    return {k: v.detach().cpu().numpy() for k, v in hs.tensors().items()}


def merged(states: list[dict], cfg: StateConfig) -> HarvestState:
    """Per-device states -> one HarvestState by the torch state's exact merge (HarvestState.merge)."""
    out = to_torch(states[0], cfg)
    for s in states[1:]:
        out.merge(to_torch(s, cfg))
    return out
