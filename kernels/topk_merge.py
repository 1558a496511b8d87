"""Merge candidates into per-latent running best-K buffers, in place.

    buf_val [L, K] float32, buf_loc [L, K] int64   running buffers, best first
    lat, val, loc [M]                               candidates (lat < 0 ignored)

Row l becomes the K best (largest, or smallest with largest=False) of its old
entries and the candidates with lat == l. Order: better value first, then
smaller loc, then old before new; empty slots hold -inf (+inf) with loc -1 and
sort after every real entry. Returns src [L, K] int64: the candidate index now
in each slot, or -1 (old entry or empty); `moved_old(src)` gives the old slot of
each kept old entry, so the caller moves payloads (activation windows) with two
gathers. Both paths run in fixed shapes and never wait for the host.

Used for the top-K max-activating examples (val = activation) and the bottom-K
reservoir (val = i.i.d. uniform key, largest=False).

Triton path: torch groups the candidates by latent and ranks them inside the
group (three stable sorts on device, no host sync); one program per latent
then merges its K old entries with its K best candidates by rank counting:
an entry's new slot is its position in its own list plus the number of entries
of the other list that beat it ([K, K] comparisons in registers, K <= 256).
Cost: O(M log M) for the sort plus L * K^2 compares; memory traffic is the
buffers (12 * L * K bytes each way) plus the candidates.
"""

import math

import torch
from torch import Tensor

from kernels.dispatch import check, tl, triton, use_triton
from kernels.sorting import stable_argsort

INT64_MAX = torch.iinfo(torch.int64).max


# ----------------------------------------------------------------------------- kernel


@triton.jit
def _topk_merge_kernel(
    buf_val_ptr,  # [L, K] fp32 old values
    buf_loc_ptr,  # [L, K] int64 old locations
    seg_lo_ptr,  # [L] int64 first sorted candidate of each latent
    seg_hi_ptr,  # [L] int64 one past its last
    order_ptr,  # [M] int64 candidate indices sorted by (lat, better val, loc)
    val_ptr,  # [M] fp32 candidate values
    loc_ptr,  # [M] int64 candidate locations
    out_val_ptr,  # [L, K] fp32 (out)
    out_loc_ptr,  # [L, K] int64 (out)
    src_ptr,  # [L, K] int64 (out)
    K,
    empty,  # fp32 value of an empty slot: -inf if LARGEST else +inf
    LARGEST: tl.constexpr,
    BLOCK_K: tl.constexpr,  # next power of two >= K
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    in_k = offs < K

    # -- the row's old entries and its (at most K) best candidates
    old_v = tl.load(buf_val_ptr + row * K + offs, mask=in_k, other=empty)
    old_l = tl.load(buf_loc_ptr + row * K + offs, mask=in_k, other=-1)
    lo = tl.load(seg_lo_ptr + row)
    hi = tl.load(seg_hi_ptr + row)
    has = in_k & (lo + offs < hi)
    idx = tl.load(order_ptr + lo + offs, mask=has, other=-1)
    new_v = tl.load(val_ptr + idx, mask=has, other=empty)
    new_l = tl.load(loc_ptr + idx, mask=has, other=-1)

    # -- scores where larger is better; empty slots (loc -1) lose every tie
    if LARGEST:
        old_s = old_v
        new_s = new_v
    else:
        old_s = -old_v
        new_s = -new_v
    old_k = tl.where(old_l < 0, 9223372036854775807, old_l)
    new_k = tl.where(new_l < 0, 9223372036854775807, new_l)

    # -- rank counting: beats[i, j] = candidate j strictly better than old entry i
    beats = (new_s[None, :] > old_s[:, None]) | ((new_s[None, :] == old_s[:, None]) & (new_k[None, :] < old_k[:, None]))
    rank_old = offs + tl.sum(beats.to(tl.int32), axis=1)  # [BK]
    rank_new = offs + tl.sum(((~beats) & in_k[:, None]).to(tl.int32), axis=0)  # [BK]; ties go to the old entry

    # -- scatter both lists into their new slots (a permutation; slots >= K fall off)
    keep_old = in_k & (rank_old < K)
    keep_new = in_k & (rank_new < K)
    out = row * K
    tl.store(out_val_ptr + out + rank_old, old_v, mask=keep_old)
    tl.store(out_loc_ptr + out + rank_old, old_l, mask=keep_old)
    tl.store(src_ptr + out + rank_old, tl.full((BLOCK_K,), -1, tl.int64), mask=keep_old)
    tl.store(out_val_ptr + out + rank_new, new_v, mask=keep_new)
    tl.store(out_loc_ptr + out + rank_new, new_l, mask=keep_new)
    tl.store(src_ptr + out + rank_new, idx, mask=keep_new)


# ----------------------------------------------------------------------------- launcher


def _check_args(buf_val, buf_loc, lat, val, loc) -> None:
    check(buf_val.ndim == 2 and buf_val.shape == buf_loc.shape, f"topk_merge: buf_val {tuple(buf_val.shape)} and buf_loc {tuple(buf_loc.shape)} must both be [L, K]")
    check(buf_val.dtype == torch.float32 and buf_loc.dtype == torch.int64, "topk_merge: buf_val must be float32 and buf_loc int64")
    check(lat.ndim == 1 and lat.shape == val.shape == loc.shape, f"topk_merge: lat {tuple(lat.shape)}, val {tuple(val.shape)}, loc {tuple(loc.shape)} must all be [M]")
    check(lat.dtype == torch.int64 and loc.dtype == torch.int64, "topk_merge: lat and loc must be int64")
    check(buf_val.is_contiguous() and buf_loc.is_contiguous(), "topk_merge: buf_val and buf_loc must be contiguous (they are updated in place)")
    check(len({t.device for t in (buf_val, buf_loc, lat, val, loc)}) == 1, "topk_merge: all tensors must be on one device")


def _sort_candidates(lat: Tensor, val: Tensor, loc: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    """Candidate order by (lat, better val, loc, index) with lat < 0 last; returns (order, sorted lat key)."""
    order = stable_argsort(loc)
    order = order[stable_argsort(val[order], descending=largest)]
    lat_key = torch.where(lat < 0, INT64_MAX, lat)
    order = order[stable_argsort(lat_key[order])]
    return order, lat_key[order]


def topk_merge_triton(buf_val, buf_loc, lat, val, loc, *, largest=True) -> Tensor:
    """Triton path of `topk_merge` (no host sync)."""
    _check_args(buf_val, buf_loc, lat, val, loc)
    L, K = buf_val.shape
    src = torch.full((L, K), -1, dtype=torch.int64, device=buf_val.device)
    if L == 0 or K == 0:
        return src
    check(K <= 256, f"topk_merge: K={K} > 256 does not fit the [K, K] rank tile; use topk_merge_torch")
    val, loc = val.float().contiguous(), loc.contiguous()  # the kernel reads them as dense 1-D
    order, lat_sorted = _sort_candidates(lat, val, loc, largest)
    rows = torch.arange(L, dtype=torch.int64, device=lat.device)
    seg_lo = torch.searchsorted(lat_sorted, rows)  # [L]
    seg_hi = torch.searchsorted(lat_sorted, rows, right=True)  # [L]
    out_val = torch.empty_like(buf_val)
    out_loc = torch.empty_like(buf_loc)
    _topk_merge_kernel[(L,)](
        buf_val, buf_loc, seg_lo, seg_hi, order, val, loc, out_val, out_loc, src, K,
        -math.inf if largest else math.inf, LARGEST=largest, BLOCK_K=triton.next_power_of_2(K))
    buf_val.copy_(out_val)  # separate outputs: no program reads a slot another thread already moved
    buf_loc.copy_(out_loc)
    return src


# ----------------------------------------------------------------------------- torch reference


def topk_merge_torch(buf_val, buf_loc, lat, val, loc, *, largest=True) -> Tensor:
    """Reference `topk_merge`, in fixed shapes (no host sync, traceable): every row merges its K old
    entries with its K best candidates, found by the same sort and segment search as the Triton path."""
    _check_args(buf_val, buf_loc, lat, val, loc)
    L, K = buf_val.shape
    M = lat.numel()
    src = torch.full((L, K), -1, dtype=torch.int64, device=buf_val.device)
    if L == 0 or K == 0 or M == 0:
        return src
    val = val.float()
    order, lat_sorted = _sort_candidates(lat, val, loc, largest)
    rows = torch.arange(L, dtype=torch.int64, device=lat.device)
    seg_lo = torch.searchsorted(lat_sorted, rows)  # [L]
    seg_hi = torch.searchsorted(lat_sorted, rows, right=True)
    pos = seg_lo[:, None] + torch.arange(K, device=lat.device)  # [L, K] the row's k-th best candidate
    has = pos < seg_hi[:, None]
    cand = torch.where(has, order[pos.clamp(max=M - 1)], -1)  # [L, K] candidate index or -1
    empty = -math.inf if largest else math.inf
    new_val = torch.where(has, val[cand.clamp(min=0)], empty)
    new_loc = torch.where(has, loc[cand.clamp(min=0)], -1)
    both_val = torch.cat([buf_val, new_val], dim=1)  # [L, 2K], old entries first
    both_loc = torch.cat([buf_loc, new_loc], dim=1)
    both_src = torch.cat([torch.full_like(cand, -1), cand], dim=1)
    loc_key = torch.where(both_loc < 0, INT64_MAX, both_loc)  # empty slots lose every tie
    o = stable_argsort(loc_key, dim=1)  # stable: old before new on equal loc
    o = o.gather(1, stable_argsort(both_val.gather(1, o), dim=1, descending=largest))[:, :K]
    buf_val.copy_(both_val.gather(1, o))
    buf_loc.copy_(both_loc.gather(1, o))
    return both_src.gather(1, o)


def moved_old(src: Tensor) -> Tensor:
    """[L, K] old slot of each entry that `topk_merge` kept from the old buffer (garbage where src >= 0).

    Old entries keep their order (the buffers are sorted by the merge's own key), so the i-th slot
    holding an old entry holds old slot i: payloads (windows) move with one gather."""
    return ((src < 0).cumsum(dim=1) - 1).clamp(min=0)


def topk_merge(buf_val, buf_loc, lat, val, loc, *, largest=True) -> Tensor:
    """Merge candidates into per-latent best-K buffers in place; returns src [L, K] (see module docstring)."""
    impl = topk_merge_triton if use_triton(buf_val) else topk_merge_torch
    return impl(buf_val, buf_loc, lat, val, loc, largest=largest)


# ----------------------------------------------------------------------------- one candidate per group


def group_best(group: Tensor, val: Tensor) -> Tensor:
    """[M] bool: whether each candidate is the best of its group (largest val, ties: the earliest index).

    group [M] int64 group id per candidate (< 2^53; INT64_MAX = no group, never best)
    val   [M] float candidate values

    The top-K buffers' one-firing-per-window rule: a latent's candidates grouped by (sequence, chunk)
    keep only their strongest before `topk_merge`, so a row never holds two firings of one chunk.
    One stable sort and two segment reductions, fixed shapes, no host sync (torch on every device:
    the sort dominates, and it is already on device)."""
    if group.shape != val.shape or group.dim() != 1:
        raise ValueError(f"group {tuple(group.shape)} and val {tuple(val.shape)} must be equal 1-d shapes")
    M = group.numel()
    if M == 0:
        return torch.zeros(0, dtype=torch.bool, device=group.device)
    order = stable_argsort(group)
    g, v = group[order], val[order].float()
    first = torch.ones(M, dtype=torch.bool, device=group.device)
    first[1:] = g[1:] != g[:-1]
    seg = first.cumsum(0) - 1  # [M] segment of each sorted candidate
    top = torch.full((M,), -math.inf, device=group.device).scatter_reduce(0, seg, v, reduce="amax")
    at_top = torch.where(v == top[seg], order, M)  # original index of each candidate at its group's best
    earliest = torch.full((M,), M, dtype=torch.int64, device=group.device).scatter_reduce(0, seg, at_top, reduce="amin")
    best_sorted = (order == earliest[seg]) & (g != INT64_MAX)
    return torch.zeros(M, dtype=torch.bool, device=group.device).scatter_(0, order, best_sorted)
