"""A uniform, deterministic subsample of token positions for co-occurrence at large dictionary sizes.

Co-firing pairs grow as N P^2 per batch (P firings per token): a 131k-token batch of a k = 64
TopK SAE has 537M of them, more than every other statistic together. Above a pair budget the
sketched co-occurrence table counts the pairs of a sample of positions only: position p is in
the sample when a hash of its global location is below `rate` (each position independently,
with probability `rate`), so any split of the data, resumed or merged, samples the same
positions. Counts are scaled by 1 / rate when written; the standard error of such an
estimate c / rate is sqrt(c (1 - rate)) / rate (binomial thinning), written next to it.

In fixed shapes: the T = rate N + 8 sigma + 64 positions with the smallest hashes are taken
(`torch.topk`), those whose hash is below `rate` kept; more than T qualifying (probability
< 1e-15 per batch) would be counted in `excess`, never silently dropped.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from engine.harvest.firings import reservoir_keys

SALT = 0x5EED_C00C
"Mixed into the seed so the position sample is independent of the reservoir keys."


def sample_cap(n_tok: int, rate: float) -> int:
    """Fixed number of slots T for the sampled positions of an n_tok-position batch."""
    mean = rate * n_tok
    return min(n_tok, math.ceil(mean + 8 * math.sqrt(mean * (1 - rate)) + 64))


def position_keys(tok_loc: Tensor, seed: int) -> Tensor:
    """[N] uniform keys in [0, 1) of global locations; a position is sampled when its key is below the rate."""
    return reservoir_keys(tok_loc, torch.zeros_like(tok_loc), 1, seed + SALT)


def sample_positions(tok_loc: Tensor, rate: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """tok_loc [N] global locations -> (idx [T] batch positions, keep [T] bool, excess [] int64)."""
    key = position_keys(tok_loc, seed)  # [N]
    small, idx = torch.topk(key, sample_cap(len(key), rate), largest=False, sorted=False)
    keep = small < rate
    return idx, keep, (key < rate).sum() - keep.sum()


PAIRS_PER_BATCH = {"cpu": 1 << 20, "accelerator": 1 << 24}
"""Auto rate: co-firing pairs a batch may build for a sketched table. On a CPU the sketch's sort of 4M pairs
took 3.5 s (135M shape, 16k latents, one thread), as long as a third of the forward; a GPU sorts 16M in
milliseconds."""


def choose_rate(requested: float, n_tok: int, per_token: int, sketched: bool, device: str = "cpu") -> float:
    """--cooc-sample-rate: a requested rate in (0, 1] as is; 0 (auto) samples only a sketched table, at the
    rate that keeps a batch's co-firing pairs within PAIRS_PER_BATCH of the device kind (cpu, else
    accelerator); dense tables always count every position."""
    if not sketched:
        return 1.0
    if requested > 0:
        return min(1.0, requested)
    budget = PAIRS_PER_BATCH["cpu" if device == "cpu" else "accelerator"]
    pairs = n_tok * per_token * per_token
    return 1.0 if pairs <= budget else budget / pairs
