"""Latent co-occurrence counts: how often two latents fire on the same token.

Two paths, chosen by the caller's cost model:

* dense: C [L, L] int64 += F^T F, with F [n_tok, L] the binary firing matrix.
  2 * n_tok * L^2 FLOPs on tensor cores; fp16 inputs are exact (0/1) and the fp32
  accumulator is exact while a count stays below 2^24, so n_tok is processed in
  chunks of at most 2^24 rows. C is symmetric: programs compute only the tiles
  on and above the diagonal and store each off-diagonal tile twice (transposed),
  so every element of C has exactly one writer (no atomics) and half the FLOPs.
* pairs: every ordered pair (a, b), a != b, of latents firing on the same token:
  sum over tokens of k_t (k_t - 1) pairs, for a sparse table to count. `cooc_pairs`
  returns exactly those (its size depends on the data); `cooc_pairs_bounded` returns
  them in M * P fixed slots (P >= the largest k_t), the form the harvest state traces.
  (Firings are unique per (tok, lat), as `encode_pack` produces them.)
"""

import torch
from torch import Tensor

from kernels.dispatch import check, interpreting, tl, triton, use_triton
from kernels.matmul_tile import matmul_tile
from kernels.sorting import stable_argsort

EXACT_ROWS = 1 << 24  # fp32 holds every integer below 2^24 exactly


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _cooc_dense_kernel(
    f_ptr,  # [T, L] fp16 binary firing matrix
    c_ptr,  # [L, L] int64 (in/out) counts
    T, L,
    stride_ft, stride_fl, stride_ca, stride_cb,
    BLOCK: tl.constexpr,  # square tiles: tile (m, n) and its mirror (n, m) have the same shape
    BLOCK_T: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    if pid_m <= pid_n:  # upper triangle only; the mirror store covers the rest
        offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)
        offs_n = pid_n * BLOCK + tl.arange(0, BLOCK)
        mask_m = offs_m < L
        mask_n = offs_n < L
        # A = F^T (F with its strides swapped), B = F; fp16 0/1 products on tensor cores
        acc = matmul_tile(f_ptr, f_ptr, f_ptr, offs_m, offs_n, mask_m, mask_n, T,
                          stride_fl, stride_ft, stride_ft, stride_fl, False, False, BLOCK, BLOCK, BLOCK_T)
        cnt = acc.to(tl.int64)
        mask = mask_m[:, None] & mask_n[None, :]
        ptr = c_ptr + offs_m[:, None] * stride_ca + offs_n[None, :] * stride_cb
        tl.store(ptr, tl.load(ptr, mask=mask, other=0) + cnt, mask=mask)
        if pid_m != pid_n:
            ptr_t = c_ptr + offs_n[None, :] * stride_ca + offs_m[:, None] * stride_cb  # C[n, m] = tile^T
            tl.store(ptr_t, tl.load(ptr_t, mask=mask, other=0) + cnt, mask=mask)


@triton.jit
def _cooc_pairs_kernel(
    lat_ptr,  # [M] int64 valid firings, grouped by token
    start_ptr,  # [M] int64 first entry of each entry's token group
    size_ptr,  # [M] int64 size of that group
    out_off_ptr,  # [M] int64 first output slot of each entry
    a_ptr,  # [P] int64 (out)
    b_ptr,  # [P] int64 (out)
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    start = tl.load(start_ptr + i)
    size = tl.load(size_ptr + i)
    off = tl.load(out_off_ptr + i)
    me = i - start  # position of entry i in its group
    a = tl.load(lat_ptr + i)
    for j0 in range(0, size, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        mask = (j < size) & (j != me)
        b = tl.load(lat_ptr + start + j, mask=mask, other=-1)
        slot = off + j - (j > me).to(tl.int64)  # skip the self pair
        tl.store(a_ptr + slot, tl.zeros((BLOCK,), tl.int64) + a, mask=mask)
        tl.store(b_ptr + slot, b, mask=mask)


# ----------------------------------------------------------------------------- launchers


def _check_dense(C, tok, lat, n_tok) -> None:
    check(C.ndim == 2 and C.shape[0] == C.shape[1] and C.dtype == torch.int64, f"cooc_dense_update: C must be [L, L] int64, got {tuple(C.shape)} {C.dtype}")
    check(tok.ndim == 1 and tok.shape == lat.shape, f"cooc_dense_update: tok {tuple(tok.shape)} and lat {tuple(lat.shape)} must both be [M]")
    check(tok.dtype == lat.dtype == torch.int64, "cooc_dense_update: tok and lat must be int64")
    check(n_tok >= 0, f"cooc_dense_update: n_tok must be >= 0, got {n_tok}")
    check(len({t.device for t in (C, tok, lat)}) == 1, "cooc_dense_update: all tensors must be on one device")


def cooc_dense_update_triton(C, tok, lat, n_tok) -> None:
    """Triton path of `cooc_dense_update`: C += F^T F as fp16 tensor-core tiles."""
    _check_dense(C, tok, lat, n_tok)
    L = C.shape[0]
    if n_tok == 0 or L == 0:
        return
    F = torch.zeros(n_tok, L, dtype=torch.float16, device=C.device)  # [T, L]
    # ignored entries (lat < 0) aim at slot 0 with 0: amax leaves a real 1 there intact
    F.view(-1).scatter_reduce_(0, torch.where(lat >= 0, tok * L + lat, 0), (lat >= 0).to(F.dtype), reduce="amax")
    BLOCK, BLOCK_T, warps = (32, 32, 4) if interpreting() else (128, 64, 8)
    nb = triton.cdiv(L, BLOCK)
    for t0 in range(0, n_tok, EXACT_ROWS):
        Fc = F[t0:t0 + EXACT_ROWS]
        _cooc_dense_kernel[(nb, nb)](
            Fc, C, Fc.shape[0], L, Fc.stride(0), Fc.stride(1), C.stride(0), C.stride(1),
            BLOCK=BLOCK, BLOCK_T=BLOCK_T, num_warps=warps)


def cooc_pairs_triton(tok, lat) -> tuple[Tensor, Tensor]:
    """Triton path of `cooc_pairs`; one host sync, to size the output."""
    _, lv, start, size = _groups(tok, lat)
    out_n = size - 1  # [M'] pairs written by each entry
    out_off = out_n.cumsum(0) - out_n
    P = int(out_n.sum()) if out_n.numel() else 0
    a = torch.empty(P, dtype=torch.int64, device=tok.device)
    b = torch.empty(P, dtype=torch.int64, device=tok.device)
    if P:
        _cooc_pairs_kernel[(lv.numel(),)](lv, start, size, out_off, a, b, BLOCK=64)
    return a, b


# ----------------------------------------------------------------------------- torch references


def cooc_dense_update_torch(C, tok, lat, n_tok) -> None:
    """Reference `cooc_dense_update`: F^T F in fp32 (exact below 2^24 rows per chunk)."""
    _check_dense(C, tok, lat, n_tok)
    L = C.shape[0]
    if n_tok == 0 or L == 0:
        return
    F = torch.zeros(n_tok, L, dtype=torch.float32, device=C.device)  # [T, L]
    # fixed shape; padding adds 0 at its clamped place (a flat index_add_: index_put_ with accumulate sorts first)
    F.view(-1).index_add_(0, tok.clamp(0, max(n_tok - 1, 0)) * L + lat.clamp(min=0), (lat >= 0).float())
    for t0 in range(0, n_tok, EXACT_ROWS):
        Fc = F[t0:t0 + EXACT_ROWS]
        C += (Fc.T @ Fc).to(torch.int64)


def _groups(tok, lat) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Valid firings with, per entry, the start and size of its token group."""
    check(tok.ndim == 1 and tok.shape == lat.shape, f"cooc_pairs: tok {tuple(tok.shape)} and lat {tuple(lat.shape)} must both be [M]")
    check(tok.dtype == lat.dtype == torch.int64, "cooc_pairs: tok and lat must be int64")
    ok = (lat >= 0).nonzero().squeeze(1)
    t, lv = tok[ok], lat[ok]  # [M']
    check(bool((t[1:] >= t[:-1]).all()), "cooc_pairs: firings must be sorted by tok -- call sort_firings first")
    _, counts = torch.unique_consecutive(t, return_counts=True)
    start = torch.repeat_interleave(counts.cumsum(0) - counts, counts)  # [M']
    size = torch.repeat_interleave(counts, counts)  # [M']
    return t, lv, start, size


def cooc_pairs_torch(tok, lat) -> tuple[Tensor, Tensor]:
    """Reference `cooc_pairs`: pairs ordered by (token, a's entry, b's entry)."""
    _, lv, start, size = _groups(tok, lat)
    M = lv.numel()
    n_out = size - 1  # [M'] partners of each entry (its group minus itself)
    P = int(n_out.sum()) if M else 0
    a = torch.repeat_interleave(lv, n_out)  # [P]
    a_idx = torch.repeat_interleave(torch.arange(M, device=lv.device), n_out, output_size=P)
    j = torch.arange(P, device=lv.device) - torch.repeat_interleave(n_out.cumsum(0) - n_out, n_out, output_size=P)
    me = torch.arange(M, device=lv.device) - start  # [M'] position of each entry in its group
    b_idx = start[a_idx] + j + (j >= me[a_idx]).long()  # skip the self pair
    return a, lv[b_idx]


def cooc_pairs_bounded(tok, lat, per_token: int, *, include_self: bool = False) -> tuple[Tensor, Tensor]:
    """Every ordered pair (a, b), a != b (a == b too with include_self: the diagonal counts firings), of
    latents firing on the same token, in fixed shapes: [M * P] slots (P = per_token, at least the most
    firings any token has), -1 where a slot holds no pair. Firings in any order, lat < 0 padding.
    The traceable form of `cooc_pairs` for the harvest state."""
    check(tok.ndim == 1 and tok.shape == lat.shape, f"cooc_pairs_bounded: tok {tuple(tok.shape)} and lat {tuple(lat.shape)} must both be [M]")
    check(per_token >= 1, f"cooc_pairs_bounded: per_token must be >= 1, got {per_token}")
    M, P = tok.numel(), per_token
    if M == 0:
        return tok.new_empty(0), lat.new_empty(0)
    key = torch.where(lat >= 0, tok, torch.iinfo(torch.int64).max)  # padding sorts last
    order = stable_argsort(key)
    key, ls = key[order], lat[order]
    start = torch.searchsorted(key, key)  # [M] first entry of each entry's token
    end = torch.searchsorted(key, key, right=True)
    j = start[:, None] + torch.arange(P, device=tok.device)  # [M, P] partner candidates
    me = torch.arange(M, device=tok.device)[:, None]
    has = (j < end[:, None]) & ((j != me) | include_self) & (ls >= 0)[:, None]
    a = torch.where(has, ls[:, None].expand(M, P), -1)
    b = torch.where(has, ls[j.clamp(max=M - 1)], -1)
    return a.reshape(-1), b.reshape(-1)


def cooc_pairs_rows(lat: Tensor, *, include_self: bool = False) -> tuple[Tensor, Tensor]:
    """`cooc_pairs_bounded` for firings already laid out per token: lat [N, P] (-1 padding) -> every
    (a, b) of one row, [N * P * P] slots, -1 where none. No sort: the rows are the groups."""
    check(lat.ndim == 2 and lat.dtype == torch.int64, f"cooc_pairs_rows: lat must be [N, P] int64, got {tuple(lat.shape)} {lat.dtype}")
    N, P = lat.shape
    a, b = lat[:, :, None].expand(N, P, P), lat[:, None, :].expand(N, P, P)
    has = (a >= 0) & (b >= 0)
    if not include_self:
        has = has & ~torch.eye(P, dtype=torch.bool, device=lat.device)
    return torch.where(has, a, -1).reshape(-1), torch.where(has, b, -1).reshape(-1)


def cooc_dense_update(C, tok, lat, n_tok) -> None:
    """C [L, L] int64 += F^T F for the binary firing matrix F [n_tok, L] of (tok, lat); lat < 0 ignored."""
    (cooc_dense_update_triton if use_triton(C) else cooc_dense_update_torch)(C, tok, lat, n_tok)


def cooc_pairs(tok, lat) -> tuple[Tensor, Tensor]:
    """All ordered pairs (a, b), a != b, of latents firing on the same token; int64 [P], [P]."""
    return (cooc_pairs_triton if use_triton(tok) else cooc_pairs_torch)(tok, lat)
