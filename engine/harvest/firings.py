"""A batch's firings in fixed slots, as the dictionaries emit them, and the hash that keys the reservoir.

    Firings(tok [C], lat [C], val [C], per_token=P)

C slots, in any order; a slot with lat < 0 is padding (its tok and val are ignored).
`tok` is the flat position b * S + s of the batch, `val` > 0 the activation. The shapes
depend only on the batch and dictionary sizes, never on the data, so the state update
that consumes them needs no host synchronisation:

* TopK: C = N * k, P = k (each token's k winners; those <= 0 are padding);
* other activations (ReLU, JumpReLU, gated, SPD CI, neurons): the P strongest firings of
  each token in its row, C = N * P + spill_slots(N, P, L) with P = min(L, FIRINGS_PER_TOKEN)
  (N * P // SPILL_SHARE spill slots, none when P = L):
  the firings beyond a token's P go to the batch's shared spill, the last `spilled` slots
  (in token, then latent order), so a few tokens that fire thousands of latents (a start
  token, an attention sink) lose nothing. Only what even the spill cannot hold is dropped;
  `overflow` counts it on device (reported at the end of a harvest; raise the cap with
  --firings-per-token when it is not zero);
* the Triton encode packs into the same C slots (its atomic counter's excess is the overflow),
  then ranks each token's firings by value into its row and the rest into the spill.

Every per-latent statistic (counts, sums, maxima, histograms, top-K, reservoir, token counts)
takes every slot, spill included. Co-occurrence pairs are built from the rows alone: a pair
that involves a spilled firing is not counted (the README says so).

`per_token` bounds how many valid slots any one token has in the rows (co-occurrence pairs
are built per token from it); None means unknown (then min(C, L) is assumed).

`reservoir_keys` is a pure function of (location, latent, seed): the uniform sample is
the bottom-R keys per latent, so any split of the data merges to the single-pass sample
exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.sorting import stable_argsort

FIRINGS_PER_TOKEN = 256
"Default cap P of firings kept per token for non-TopK dictionaries (the strongest)."
SPILL_SHARE = 4
"A batch of N tokens spills firings beyond their token's P into N * P // SPILL_SHARE shared slots."


def spill_slots(n_tok: int, per_token: int, n_latents: int) -> int:
    """Spill slots of a batch: none when a row holds every latent."""
    return 0 if per_token >= n_latents else n_tok * per_token // SPILL_SHARE


class Firings:
    """One batch's firings in C fixed slots (see the module docstring)."""

    __slots__ = ("tok", "lat", "val", "per_token", "overflow", "rows", "spilled")

    def __init__(self, tok: Tensor, lat: Tensor, val: Tensor, per_token: int | None = None,
                 overflow: Tensor | None = None, rows: bool = False, spilled: int = 0):
        self.tok, self.lat, self.val = tok, lat, val  # [C] int64, [C] int64 (-1 = padding), [C] float32
        self.per_token = per_token
        self.overflow = overflow  # [] int64 on device: firings dropped (past the rows and the spill), or None
        self.rows = rows
        "Slot t * P + j (t < N) is token t's j-th firing: per-token work needs no sort."
        self.spilled = spilled
        "The last `spilled` slots are the spill: firings beyond their token's P (per-latent statistics only)."

    @property
    def n_paired(self) -> int:
        """How many leading slots co-occurrence pairs are built from: every slot but the spill."""
        return len(self.tok) - self.spilled

    def with_offset(self, off: int) -> Firings:
        """The same firings with latent ids shifted by `off` (a dictionary's place on the global axis)."""
        return Firings(self.tok, torch.where(self.lat >= 0, self.lat + off, -1), self.val, self.per_token,
                       self.overflow, self.rows, self.spilled)


def from_rows(idx: Tensor, val: Tensor, offset: int = 0, overflow: Tensor | None = None,
              spill: tuple[Tensor, Tensor, Tensor] | None = None) -> Firings:
    """Firings from per-token rows: idx, val [N, P] (latent, activation); val <= 0 marks padding.
    spill: (tok, lat, val) [C_s] flat firings beyond the rows (lat < 0 padding), appended as the spill."""
    N, P = idx.shape
    fire = val > 0
    tok = torch.arange(N, device=idx.device)[:, None].expand(N, P).reshape(-1)
    lat = torch.where(fire, idx + offset, -1).reshape(-1)
    v = torch.where(fire, val, 0.0).float().reshape(-1)
    if spill is None:
        return Firings(tok, lat, v, per_token=P, overflow=overflow, rows=True)
    s_tok, s_lat, s_val = spill
    return Firings(torch.cat([tok, s_tok]), torch.cat([lat, torch.where(s_lat >= 0, s_lat + offset, -1)]),
                   torch.cat([v, s_val.float()]), per_token=P, overflow=overflow, rows=True, spilled=len(s_tok))


def pack_slots(take: Tensor, slots: int) -> tuple[Tensor, Tensor]:
    """Indices of the first `slots` True entries of take [M], in `slots` fixed slots by a prefix sum
    (-1 where empty), and how many True entries did not fit ([] int64, on device)."""
    small = len(take) < 2**31  # int32 prefix sums halve the memory of a dense [N L] mask
    dt = torch.int32 if small else torch.int64
    pos = take.cumsum(0, dtype=dt) - 1  # [M] each entry's slot
    src = torch.full((slots + 1,), -1, dtype=dt, device=take.device)  # slot `slots` takes the rest
    src.scatter_(0, torch.where(take & (pos < slots), pos, slots).long(),
                 torch.arange(len(take), dtype=dt, device=take.device))
    return src[:slots].long(), (take.sum() - slots).clamp(min=0)


def strongest(acts: Tensor, per_token: int = FIRINGS_PER_TOKEN) -> Firings:
    """Each row of acts [N, L]: its `per_token` largest positive activations (all of them when L is smaller)
    in its row, the positive ones beyond that in the spill (token, then latent order), and the count of
    those the spill could not hold."""
    N, L = acts.shape
    P = min(per_token, L)
    val, idx = acts.topk(P, dim=1)  # [N, P]
    if P == L:
        return from_rows(idx, val)
    beyond = (acts > 0).scatter_(1, idx, False).reshape(-1)  # [N L] positive and outside the token's P
    src, overflow = pack_slots(beyond, spill_slots(N, P, L))  # [C_s] flat index token * L + latent
    got, at = src >= 0, src.clamp(min=0)
    spill = (torch.where(got, at // L, 0), torch.where(got, at % L, -1), torch.where(got, acts.reshape(-1)[at], 0.0))
    return from_rows(idx, val, overflow=overflow, spill=spill)


def rows_of_sorted(tok: Tensor, lat: Tensor, val: Tensor, n_tok: int, per_token: int, slots: int = 0,
                   dropped: Tensor | None = None) -> Firings:
    """Flat firings sorted by (token, latent) (padding lat < 0 last) -> the `strongest` layout: each
    token's P = per_token largest by value in its row (ties: lower latent first), the rest in the spill
    in (token, latent) order (`slots` of them: spill_slots), `overflow` what the spill could not hold
    (plus `dropped`, lost before)."""
    P, C = per_token, len(tok)
    ok = lat >= 0
    key = torch.where(ok, tok, n_tok)  # padding sorts after every token
    by_val = stable_argsort(torch.where(ok, -val.float(), 0.0))  # strongest first; equal values keep latent order
    order = by_val[stable_argsort(key[by_val])]  # (token, -value, latent)
    k_sorted = key[order]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(C, device=tok.device) - torch.searchsorted(k_sorted, k_sorted)
    keep = ok & (rank < P)
    row = torch.where(keep, key, n_tok)  # [C] into [N + 1, P + 1]: the extra row and column take the rest
    col = torch.where(keep, rank, P)
    idx = torch.zeros(n_tok + 1, P + 1, dtype=torch.int64, device=tok.device)
    v = torch.zeros(n_tok + 1, P + 1, dtype=torch.float32, device=tok.device)
    idx[row, col] = lat.clamp(min=0)
    v[row, col] = torch.where(keep, val.float(), 0.0)
    if slots:
        src, over = pack_slots(ok & ~keep, slots)  # the inputs are in (token, latent) order already
        got, at = src >= 0, src.clamp(min=0)
        spill = (torch.where(got, tok[at], 0), torch.where(got, lat[at], -1), torch.where(got, val[at].float(), 0.0))
    else:
        over, spill = (ok & ~keep).sum(), None
    return from_rows(idx[:n_tok, :P], v[:n_tok, :P], overflow=over if dropped is None else over + dropped, spill=spill)


def concat(parts: list[Firings]) -> Firings:
    """Firings of several dictionaries (global latent ids already applied) as one batch: their paired
    slots first (rows side by side when every part has rows), then their spills."""
    if len(parts) == 1:
        return parts[0]
    P = None if any(p.per_token is None for p in parts) else sum(p.per_token for p in parts)
    over = [p.overflow for p in parts if p.overflow is not None]
    over = sum(over) if over else None
    rows = all(p.rows for p in parts)  # the same N tokens: each token's slots side by side, still rows
    n = parts[0].n_paired // parts[0].per_token if rows else 0

    def joined(name):
        head = [getattr(p, name)[:p.n_paired] for p in parts]
        head = torch.cat([h.view(n, p.per_token) for h, p in zip(head, parts)], dim=1).reshape(-1) if rows else torch.cat(head)
        return torch.cat([head] + [getattr(p, name)[p.n_paired:] for p in parts])

    return Firings(joined("tok"), joined("lat"), joined("val"), per_token=P, overflow=over, rows=rows,
                   spilled=sum(p.spilled for p in parts))


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
