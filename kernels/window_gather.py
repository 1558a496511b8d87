"""Activation windows around queried firings, from one batch's sorted firing keys.

    keys [M] int64 ascending = tok * n_latents + lat (padding = int64 max at the end)
    vals [M] float32
    out[q, j] = activation of latent q_lat[q] at token t = q_tok[q] - window + j,
                0 if t falls outside q_tok[q]'s sequence or (t, lat) did not fire

Each of the Q * (2W+1) outputs is an independent lower-bound binary search over
the keys (ceil(log2(M+1)) probes), so the op never builds a dense [tokens, L]
tensor. The probes of neighbouring outputs hit the same cache lines (same
latent, adjacent tokens), so on GPU it runs near the gather rate of L2.
"""

import torch
from torch import Tensor

from kernels.dispatch import check, tl, triton, use_triton

# ----------------------------------------------------------------------------- kernel


@triton.jit
def _gather_windows_kernel(
    keys_ptr,  # [M] int64 sorted
    vals_ptr,  # [M] fp32
    q_tok_ptr,  # [Q] int64
    q_lat_ptr,  # [Q] int64
    out_ptr,  # [Q, W2] fp32 (out)
    M, Q, n_latents, window, seq_len, n_steps,
    W2: tl.constexpr,  # 2 * window + 1
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    e = pid * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] flat output index
    mask = e < Q * W2
    q = e // W2
    j = e % W2
    tok = tl.load(q_tok_ptr + q, mask=mask, other=0)
    lat = tl.load(q_lat_ptr + q, mask=mask, other=0)
    t = tok - window + j
    # t >= 0 first: Triton's integer division truncates toward zero
    same = mask & (t >= 0) & (t // seq_len == tok // seq_len)
    want = t * n_latents + lat

    # -- lower bound of want in keys
    lo = tl.zeros((BLOCK,), dtype=tl.int64)
    hi = tl.zeros((BLOCK,), dtype=tl.int64) + M
    for _ in range(n_steps):
        active = lo < hi
        mid = (lo + hi) // 2
        k = tl.load(keys_ptr + mid, mask=same & active, other=0)
        go_right = active & (k < want)
        lo = tl.where(go_right, mid + 1, lo)
        hi = tl.where(active & ~go_right, mid, hi)

    hit = same & (lo < M)
    found = tl.load(keys_ptr + lo, mask=hit, other=-1)
    hit = hit & (found == want)
    v = tl.load(vals_ptr + lo, mask=hit, other=0.0)
    tl.store(out_ptr + e, tl.where(hit, v, 0.0), mask=mask)


# ----------------------------------------------------------------------------- launcher


def _check_args(keys, vals, q_tok, q_lat, window, seq_len) -> None:
    check(keys.ndim == 1 and keys.shape == vals.shape, f"gather_windows: keys {tuple(keys.shape)} and vals {tuple(vals.shape)} must both be [M]")
    check(q_tok.ndim == 1 and q_tok.shape == q_lat.shape, f"gather_windows: q_tok {tuple(q_tok.shape)} and q_lat {tuple(q_lat.shape)} must both be [Q]")
    check(keys.dtype == q_tok.dtype == q_lat.dtype == torch.int64, "gather_windows: keys, q_tok, q_lat must be int64")
    check(window >= 0 and seq_len >= 1, f"gather_windows: need window >= 0 and seq_len >= 1, got {window}, {seq_len}")
    check(len({t.device for t in (keys, vals, q_tok, q_lat)}) == 1, "gather_windows: all tensors must be on one device")


def gather_windows_triton(keys, vals, n_latents, q_tok, q_lat, *, window, seq_len) -> Tensor:
    """Triton path of `gather_windows` (no host sync)."""
    _check_args(keys, vals, q_tok, q_lat, window, seq_len)
    Q, W2, M = q_tok.numel(), 2 * window + 1, keys.numel()
    out = torch.empty(Q, W2, dtype=torch.float32, device=q_tok.device)
    if Q == 0:
        return out
    BLOCK = 256
    _gather_windows_kernel[(triton.cdiv(Q * W2, BLOCK),)](
        keys.contiguous(), vals.float().contiguous(), q_tok.contiguous(), q_lat.contiguous(), out,
        M, Q, n_latents, window, seq_len, max(1, M.bit_length()), W2=W2, BLOCK=BLOCK)
    return out


# ----------------------------------------------------------------------------- torch reference


DENSE_TABLE_ELEMS = 1 << 25
"The torch path builds a [n_latents, sequences, S + 2W] table when it has at most this many entries (128 MiB)."


def gather_windows_torch(keys, vals, n_latents, q_tok, q_lat, *, window, seq_len, n_tok=None) -> Tensor:
    """Reference `gather_windows`: one vectorised searchsorted over all outputs; or, given n_tok (the
    batch's token count, a multiple of seq_len) and a small enough batch, a dense per-sequence table
    of the firings read through an unfold view (the same values, no search)."""
    _check_args(keys, vals, q_tok, q_lat, window, seq_len)
    W2 = 2 * window + 1
    if n_tok is not None and n_tok % seq_len == 0 and n_latents * (n_tok + 2 * window * n_tok // seq_len) <= DENSE_TABLE_ELEMS:
        n_seq = n_tok // seq_len
        table = torch.zeros(n_latents, n_seq, seq_len + 2 * window, dtype=torch.float32, device=q_tok.device)
        real = keys < n_latents * n_tok  # padding keys (int64 max) sort last
        tok, lat = torch.where(real, keys // n_latents, 0), torch.where(real, keys % n_latents, 0)
        padded = seq_len + 2 * window  # a flat index_add_ (padding adds 0): index_put_ with accumulate sorts first
        table.view(-1).index_add_(0, (lat * n_seq + tok // seq_len) * padded + tok % seq_len + window,
                                  torch.where(real, vals.float(), 0.0))
        return table.unfold(2, W2, 1)[q_lat, q_tok // seq_len, q_tok % seq_len]  # [Q, W2]
    offs = torch.arange(-window, window + 1, device=q_tok.device)  # [W2]
    t = q_tok[:, None] + offs  # [Q, W2]
    same = (t >= 0) & (torch.div(t, seq_len, rounding_mode="floor") == (q_tok // seq_len)[:, None])
    if keys.numel() == 0:
        return torch.zeros(t.shape, dtype=torch.float32, device=q_tok.device)
    want = t.clamp(min=0) * n_latents + q_lat[:, None]  # [Q, W2]
    pos = torch.searchsorted(keys, want).clamp(max=keys.numel() - 1)
    hit = same & (keys[pos] == want)
    return torch.where(hit, vals[pos].float(), 0.0)


def gather_windows(keys, vals, n_latents, q_tok, q_lat, *, window, seq_len, n_tok=None) -> Tensor:
    """[Q, 2*window+1] float32 activations around each query (see module docstring); n_tok (the batch's
    tokens) lets the torch path use a dense table for small batches."""
    if use_triton(q_tok):
        return gather_windows_triton(keys, vals, n_latents, q_tok, q_lat, window=window, seq_len=seq_len)
    return gather_windows_torch(keys, vals, n_latents, q_tok, q_lat, window=window, seq_len=seq_len, n_tok=n_tok)
