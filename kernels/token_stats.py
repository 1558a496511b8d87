"""Scatter-add into a pair table: table[rows[i], cols[i]] += weights[i] (or 1).

Used for latent x token counts (input token at a firing, predicted next-token
mass) and sparse co-occurrence pairs. The Triton path is one relaxed atomic add
per entry: the traffic is the M entries plus one read-modify-write of a table
element each, so it runs at the atomic throughput of the device; hot rows
(frequent latents) serialise on their cache lines, which is why callers
pre-aggregate when one latent dominates.

rows < 0 are ignored (padding). Columns must lie in [0, V): the reference
raises on an out-of-range index; the Triton path masks it out (it cannot check
without a host sync).
"""

import torch
from torch import Tensor

from kernels.dispatch import check, tl, triton, use_triton

TABLE_DTYPES = (torch.int64, torch.float32, torch.float64)


# ----------------------------------------------------------------------------- kernel


@triton.jit
def _pair_count_kernel(
    table_ptr,  # [R, V] int64/fp32/fp64 (in/out)
    rows_ptr,  # [M] int64
    cols_ptr,  # [M] int64
    w_ptr,  # [M] table dtype (unused without HAS_W)
    M, R, V, stride_r, stride_v,
    HAS_W: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    r = tl.load(rows_ptr + offs, mask=mask, other=-1)
    c = tl.load(cols_ptr + offs, mask=mask, other=-1)
    mask = mask & (r >= 0) & (r < R) & (c >= 0) & (c < V)
    if HAS_W:
        w = tl.load(w_ptr + offs, mask=mask, other=0)
    else:
        w = tl.full((BLOCK,), 1, dtype=table_ptr.dtype.element_ty)
    tl.atomic_add(table_ptr + r * stride_r + c * stride_v, w, mask=mask, sem="relaxed")


# ----------------------------------------------------------------------------- launcher


def _check_args(table, rows, cols, weights) -> Tensor | None:
    check(table.ndim == 2 and table.dtype in TABLE_DTYPES, f"pair_count_update: table must be [R, V] int64/float32/float64, got {tuple(table.shape)} {table.dtype}")
    check(rows.ndim == 1 and rows.shape == cols.shape, f"pair_count_update: rows {tuple(rows.shape)} and cols {tuple(cols.shape)} must both be [M]")
    check(rows.dtype == cols.dtype == torch.int64, "pair_count_update: rows and cols must be int64")
    if weights is None:
        return None
    check(weights.shape == rows.shape, f"pair_count_update: weights {tuple(weights.shape)} must be [M] like rows")
    check(table.dtype.is_floating_point or not weights.dtype.is_floating_point,
          f"pair_count_update: float weights ({weights.dtype}) into an int64 table would truncate -- use a float table")
    return weights.to(table.dtype)


def pair_count_update_triton(table, rows, cols, weights=None) -> None:
    """Triton path of `pair_count_update`: one atomic add per entry."""
    weights = _check_args(table, rows, cols, weights)
    M = rows.numel()
    if M == 0 or table.numel() == 0:
        return
    BLOCK = 1024
    rows, cols = rows.contiguous(), cols.contiguous()
    w = weights.contiguous() if weights is not None else rows  # placeholder pointer when HAS_W is off
    _pair_count_kernel[(triton.cdiv(M, BLOCK),)](
        table, rows, cols, w, M, table.shape[0], table.shape[1], table.stride(0), table.stride(1),
        HAS_W=weights is not None, BLOCK=BLOCK)


# ----------------------------------------------------------------------------- torch reference


def pair_count_update_torch(table, rows, cols, weights=None) -> None:
    """Reference `pair_count_update`: index_add_ into the flat table (duplicates add up, in entry order), in
    fixed shapes (ignored rows add 0 to element 0; no mask indexing, no host sync). A counted entry whose
    column lies outside [0, V) gets flat index -1, which index_add_ refuses (IndexError), as it refuses a row
    past the table. On the CPU this is ~2.5x index_put_(accumulate=True), which sorts the indices first."""
    weights = _check_args(table, rows, cols, weights)
    ok = rows >= 0
    w = ok.to(table.dtype) if weights is None else torch.where(ok, weights, 0)
    V = table.shape[1]
    flat = torch.where((cols >= 0) & (cols < V), rows * V + cols, -1)
    target = table if table.is_contiguous() else table.contiguous()
    target.view(-1).index_add_(0, torch.where(ok, flat, 0), w)
    if target is not table:
        table.copy_(target)


def pair_count_update(table, rows, cols, weights=None) -> None:
    """table[rows[i], cols[i]] += weights[i] (or 1) in place; rows < 0 ignored."""
    (pair_count_update_triton if use_triton(table) else pair_count_update_torch)(table, rows, cols, weights)
