"""A batch's firings in fixed slots, as the dictionaries emit them, and the hash that keys the reservoir.

    Firings(tok [C], lat [C], val [C], per_token=P)

C slots, in any order; a slot with lat < 0 is padding (its tok and val are ignored).
`tok` is the flat position b * S + s of the batch, `val` > 0 the activation. The shapes
depend only on the batch and dictionary sizes, never on the data, so the state update
that consumes them needs no host synchronisation:

* TopK: C = N * k, P = k (each token's k winners; those <= 0 are padding);
* other activations (ReLU, JumpReLU, gated, SPD CI, neurons): the P strongest firings of
  each token, C = N * P with P = min(L, FIRINGS_PER_TOKEN); `overflow` counts, on device,
  the firings beyond P that a token had (reported at the end of a harvest; raise the cap
  with --firings-per-token when it is not zero);
* the Triton encode packs into N * P slots the same way (its atomic counter's excess is
  the overflow).

`per_token` bounds how many valid slots any one token has (co-occurrence pairs are built
per token from it); None means unknown (then min(C, L) is assumed).

`reservoir_keys` is a pure function of (location, latent, seed): the uniform sample is
the bottom-R keys per latent, so any split of the data merges to the single-pass sample
exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

FIRINGS_PER_TOKEN = 256
"Default cap P of firings kept per token for non-TopK dictionaries (the strongest)."


class Firings:
    """One batch's firings in C fixed slots (see the module docstring)."""

    __slots__ = ("tok", "lat", "val", "per_token", "overflow", "rows")

    def __init__(self, tok: Tensor, lat: Tensor, val: Tensor, per_token: int | None = None,
                 overflow: Tensor | None = None, rows: bool = False):
        self.tok, self.lat, self.val = tok, lat, val  # [C] int64, [C] int64 (-1 = padding), [C] float32
        self.per_token = per_token
        self.overflow = overflow  # [] int64 on device: firings dropped by the per-token cap, or None
        self.rows = rows
        "Slot t * P + j is token t's j-th firing (C = N * P): per-token work needs no sort."


def from_rows(idx: Tensor, val: Tensor, offset: int = 0, overflow: Tensor | None = None) -> Firings:
    """Firings from per-token rows: idx, val [N, P] (latent, activation); val <= 0 marks padding."""
    N, P = idx.shape
    fire = val > 0
    tok = torch.arange(N, device=idx.device)[:, None].expand(N, P)
    return Firings(tok.reshape(-1), torch.where(fire, idx + offset, -1).reshape(-1),
                   torch.where(fire, val, 0.0).float().reshape(-1), per_token=P, overflow=overflow, rows=True)


def strongest(acts: Tensor, per_token: int = FIRINGS_PER_TOKEN) -> Firings:
    """The `per_token` largest positive activations of each row of acts [N, L] (all of them when L is
    smaller), with the count of positive ones beyond that cap."""
    P = min(per_token, acts.shape[1])
    val, idx = acts.topk(P, dim=1)  # [N, P]
    overflow = ((acts > 0).sum(dim=1) - P).clamp(min=0).sum() if P < acts.shape[1] else None
    return from_rows(idx, val, overflow=overflow)


def rows_of_sorted(tok: Tensor, lat: Tensor, val: Tensor, n_tok: int, per_token: int,
                   dropped: Tensor | None = None) -> Firings:
    """Flat firings sorted by token (padding lat < 0 anywhere) -> per-token rows of width P = per_token.
    A token's firings past P are dropped and counted in `overflow` (with `dropped`, already lost ones)."""
    P = per_token
    ok = lat >= 0
    key = torch.where(ok, tok, n_tok)  # padding sorts after every token
    rank = torch.arange(len(tok), device=tok.device) - torch.searchsorted(key, key)
    keep = ok & (rank < P)
    row = torch.where(keep, key, n_tok)  # [C] into [N + 1, P + 1]: the extra row and column take the rest
    col = torch.where(keep, rank, P)
    idx = torch.zeros(n_tok + 1, P + 1, dtype=torch.int64, device=tok.device)
    v = torch.zeros(n_tok + 1, P + 1, dtype=torch.float32, device=tok.device)
    idx[row, col] = lat.clamp(min=0)
    v[row, col] = torch.where(keep, val.float(), 0.0)
    over = (ok & ~keep).sum()
    return from_rows(idx[:n_tok, :P], v[:n_tok, :P], overflow=over if dropped is None else over + dropped)


def concat(parts: list[Firings]) -> Firings:
    """Firings of several dictionaries (global latent ids already applied) as one batch."""
    if len(parts) == 1:
        return parts[0]
    P = None if any(p.per_token is None for p in parts) else sum(p.per_token for p in parts)
    over = [p.overflow for p in parts if p.overflow is not None]
    over = sum(over) if over else None
    if all(p.rows for p in parts):  # the same N tokens: each token's slots side by side, still rows
        n = len(parts[0].tok) // parts[0].per_token

        def side(name):
            return torch.cat([getattr(p, name).view(n, p.per_token) for p in parts], dim=1).reshape(-1)

        return Firings(side("tok"), side("lat"), side("val"), per_token=P, overflow=over, rows=True)
    return Firings(torch.cat([p.tok for p in parts]), torch.cat([p.lat for p in parts]),
                   torch.cat([p.val for p in parts]), per_token=P, overflow=over)


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
