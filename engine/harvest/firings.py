"""A batch's firings as the dictionaries emit them, and the hash that keys the reservoir sample.

`reservoir_keys` is a pure function of (location, latent, seed): the uniform sample
is the bottom-R keys per latent, so any split of the data merges to the single-pass
sample exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Firings:
    """A batch's firings, sorted by (tok, lat): tok is the flat index b * S + s."""

    __slots__ = ("tok", "lat", "val")

    def __init__(self, tok: Tensor, lat: Tensor, val: Tensor):
        self.tok, self.lat, self.val = tok, lat, val  # [M] int64, [M] int64, [M] float32


def mix64(x: Tensor) -> Tensor:
    """splitmix64 finaliser on int64 (wrapping arithmetic; logical shifts emulated)."""
    m = (1 << 64) - 1

    def srl(v: Tensor, n: int) -> Tensor:
        return (v >> n) & ((1 << (64 - n)) - 1)

    def s64(c: int) -> int:  # constant as signed int64
        c &= m
        return c - (1 << 64) if c >= 1 << 63 else c

    x = x + s64(0x9E3779B97F4A7C15)
    x = (x ^ srl(x, 30)) * s64(0xBF58476D1CE4E5B9)
    x = (x ^ srl(x, 27)) * s64(0x94D049BB133111EB)
    return x ^ srl(x, 31)


def reservoir_keys(loc: Tensor, lat: Tensor, n_latents: int, seed: int) -> Tensor:
    """I.i.d. uniform keys in [0, 1) as a pure function of (loc, lat, seed)."""
    h = mix64(mix64(loc * n_latents + lat) + seed)
    return ((h >> 40) & ((1 << 24) - 1)).to(torch.float32) * (1.0 / (1 << 24))  # 24 bits: exact in fp32
