"""Encode activations with a sparse dictionary and pack the firings, without the dense [N, L] tensor.

    pre  = (x - b_dec) @ W_enc + b_enc         [N, L], fp32 accumulation
    act  = activation(pre)                     relu | jumprelu | topk | clamp
    out  = every (tok, lat, act) with act > 0  packed into C fixed slots, count on device

The cost is the GEMM (2*N*d*L FLOPs); the usual implementation then writes and
re-reads the dense [N, L] fp32 activations (8*N*L bytes) and calls `nonzero`,
which synchronises with the host to size its output. The Triton path fuses the
activation and the compaction into the GEMM epilogue: nonzeros of a tile are
appended to the output with one atomic add per tile, so it writes only the
firings (~20 bytes each) and never waits for the host. `count` may exceed the
capacity C: the entries beyond C are dropped and the caller can retry bigger.

TopK (k largest pre per row, ties to the lower latent, then relu) runs as two
kernels. (1) Each program owns BLOCK_M rows and one of SPLIT slices of the
latents and keeps a running top-KP (KP = next power of two >= k) per row in
registers while it walks its slice tile by tile. A tile is merged only if one of
its values beats a row's current KP-th: the tile's own top-KP (a sort of
[BLOCK_M, BLOCK_N]), reversed, against the running list, elementwise max (the
first step of a bitonic merge), then a sort of [BLOCK_M, KP]. Values and latents travel as
one int64 sort key (fp32 bits << 32 | 2^31-1-lat), so the sort is exact and breaks
ties by latent index. (2) A second kernel merges the SPLIT partial lists of a
row (SPLIT * KP keys), keeps the k best positive ones and packs them like the
other activations. Only positive values enter the lists, since a non-positive
value never fires after the relu. k above TOPK_MAX_K would not fit in registers:
`encode_pack` then uses the reference.

The GEMM tiles come from `kernels.matmul_tile`, in W_enc's dtype (x is cast if
it differs; x is the small operand). b_dec is subtracted from each x tile in fp32
and the difference rounded back to that dtype, as a model running the dictionary
in bf16 would; the reference subtracts in fp32, hence the per-dtype tolerance of
the tests. fp32 weights use exact fp32 products (`input_precision="ieee"`): TF32
would move values across the firing threshold. bf16/fp16 weights use tensor cores
with fp32 accumulation.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from kernels.dispatch import check, interpreting, tl, triton, use_triton
from kernels.matmul_tile import matmul_tile

ACTIVATIONS = ("relu", "jumprelu", "topk", "clamp")
ACT_CODE = {"relu": 0, "jumprelu": 1, "clamp": 2}
INT64_MAX = torch.iinfo(torch.int64).max
TOPK_MAX_K = 256  # largest k of the Triton topk ([BLOCK_M, KP] int64 keys live in registers)


class Firings(NamedTuple):
    """Packed firings of one batch in C fixed slots; valid entries first, then padding."""

    tok: Tensor
    "[C] int64 row of x (token index); -1 for unused slots."
    lat: Tensor
    "[C] int64 latent index; -1 for unused slots."
    val: Tensor
    "[C] float32 activation (> 0); 0 for unused slots."
    count: Tensor
    "[] int64 on device: firings found. May exceed C (overflow); entries beyond C were dropped."


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _encode_pack_kernel(
    x_ptr,  # [N, D] fp32/bf16/fp16
    w_ptr,  # [D, L] same dtype as x
    bdec_ptr,  # [D] fp32 b_dec (unused without HAS_BDEC)
    bias_ptr,  # [L] fp32 b_enc
    thr_ptr,  # [L] fp32 jumprelu threshold (unused otherwise)
    out_tok_ptr,  # [C] int64 (out)
    out_lat_ptr,  # [C] int64 (out)
    out_val_ptr,  # [C] fp32 (out)
    count_ptr,  # [1] int64 (out, atomic counter, zeroed by the launcher)
    N, D, L, C,
    stride_xn, stride_xd, stride_wd, stride_wl,
    ACT: tl.constexpr,  # 0 relu, 1 jumprelu, 2 clamp
    HAS_BDEC: tl.constexpr,
    IEEE: tl.constexpr,  # exact fp32 products for fp32 inputs
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # -- map the program to a [BLOCK_M, BLOCK_N] tile of pre-activations
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] int64 rows
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] int64 latents
    mask_m = offs_m < N
    mask_n = offs_n < L

    # -- GEMM over d with fp32 accumulation
    acc = matmul_tile(x_ptr, w_ptr, bdec_ptr, offs_m, offs_n, mask_m, mask_n, D,
                      stride_xn, stride_xd, stride_wd, stride_wl, HAS_BDEC, IEEE, BLOCK_M, BLOCK_N, BLOCK_K)

    # -- epilogue: bias and activation in registers
    pre = acc + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    if ACT == 1:
        thr = tl.load(thr_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
        act = tl.where(pre > thr, pre, 0.0)
    elif ACT == 2:
        act = tl.minimum(pre, 1.0)
    else:
        act = pre
    fire = (act > 0.0) & mask_m[:, None] & mask_n[None, :]

    # -- compaction: one atomic add reserves this tile's slots, a prefix sum places each firing
    tok = tl.broadcast_to(offs_m[:, None], (BLOCK_M, BLOCK_N))
    lat = tl.broadcast_to(offs_n[None, :], (BLOCK_M, BLOCK_N))
    _append(fire, act, tok, lat, out_tok_ptr, out_lat_ptr, out_val_ptr, count_ptr, C, BLOCK_M, BLOCK_N)


@triton.jit
def _append(fire, val, tok, lat, out_tok_ptr, out_lat_ptr, out_val_ptr, count_ptr, C,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Append the entries of a [BLOCK_M, BLOCK_N] tile where `fire` to the packed output."""
    flat = tl.reshape(fire.to(tl.int32), (BLOCK_M * BLOCK_N,))
    n_fire = tl.sum(flat, axis=0)
    if n_fire > 0:
        base = tl.atomic_add(count_ptr, n_fire.to(tl.int64), sem="relaxed")
        slot = base + tl.cumsum(flat, axis=0).to(tl.int64) - 1  # [BM*BN] int64
        keep = (flat > 0) & (slot < C)
        tok = tl.reshape(tok, (BLOCK_M * BLOCK_N,))
        lat = tl.reshape(lat, (BLOCK_M * BLOCK_N,))
        tl.store(out_tok_ptr + slot, tok, mask=keep)
        tl.store(out_lat_ptr + slot, lat, mask=keep)
        tl.store(out_val_ptr + slot, tl.reshape(val, (BLOCK_M * BLOCK_N,)), mask=keep)


@triton.jit
def _topk_key(val, lat):
    """int64 key ordering by value (positive fp32), then by lower latent; -1 for values <= 0."""
    bits = val.to(tl.int32, bitcast=True).to(tl.int64)  # positive floats order like their bits
    key = (bits << 32) | (0x7FFFFFFF - lat)  # lat < 2^31 (checked by the launcher)
    return tl.where(val > 0.0, key, -1)


@triton.jit
def _encode_topk_partial_kernel(
    x_ptr,  # [N, D]
    w_ptr,  # [D, L]
    bdec_ptr,  # [D] fp32 b_dec (unused without HAS_BDEC)
    bias_ptr,  # [L] fp32 b_enc
    part_ptr,  # [N, SPLIT, KP] int64 (out) best keys of each row in each latent slice, descending
    N, D, L, slice_len,
    stride_xn, stride_xd, stride_wd, stride_wl,
    HAS_BDEC: tl.constexpr,
    IEEE: tl.constexpr,
    KP: tl.constexpr,  # next power of two >= k
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    mask_m = offs_m < N
    lat_lo = pid_s * slice_len
    lat_hi = tl.minimum(lat_lo + slice_len, L)

    best = tl.full((BLOCK_M, KP), -1, dtype=tl.int64)  # running top-KP keys per row, descending
    kth = tl.full((BLOCK_M,), -1, dtype=tl.int64)  # a tile key must beat this to enter
    for n0 in range(lat_lo, lat_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < lat_hi
        acc = matmul_tile(x_ptr, w_ptr, bdec_ptr, offs_m, offs_n, mask_m, mask_n, D,
                          stride_xn, stride_xd, stride_wd, stride_wl, HAS_BDEC, IEEE, BLOCK_M, BLOCK_N, BLOCK_K)
        pre = acc + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
        pre = tl.where(mask_m[:, None] & mask_n[None, :], pre, 0.0)
        key = _topk_key(pre, offs_n[None, :])  # [BM, BN]
        # merge only when some key beats its row's current k-th best
        if tl.max(tl.max(key, axis=1) - kth, axis=0) > 0:
            # best is descending and the tile's top-KP reversed is ascending, so their
            # elementwise max holds the KP largest of both (first step of a bitonic merge)
            best = tl.sort(tl.maximum(best, tl.flip(tl.topk(key, KP, dim=1), 1)), dim=1, descending=True)
            kth = tl.min(best, axis=1)

    offs_p = tl.arange(0, KP)
    dst = part_ptr + offs_m[:, None] * (SPLIT * KP) + pid_s * KP + offs_p[None, :]
    tl.store(dst, best, mask=mask_m[:, None])


@triton.jit
def _topk_pack_kernel(
    part_ptr,  # [N, SPLIT * KP] int64 partial top-k keys
    out_tok_ptr,  # [C] int64 (out)
    out_lat_ptr,  # [C] int64 (out)
    out_val_ptr,  # [C] fp32 (out)
    count_ptr,  # [1] int64 (out, atomic counter)
    N, k, C,
    KP: tl.constexpr,
    WIDTH: tl.constexpr,  # SPLIT * KP
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    mask_m = offs_m < N
    keys = tl.load(part_ptr + offs_m[:, None] * WIDTH + tl.arange(0, WIDTH)[None, :], mask=mask_m[:, None], other=-1)
    top = tl.topk(keys, KP, dim=1)  # [BM, KP] descending
    fire = (top >= 0) & (tl.arange(0, KP)[None, :] < k) & mask_m[:, None]
    val = (top >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    lat = 0x7FFFFFFF - (top & 0x7FFFFFFF)
    tok = tl.broadcast_to(offs_m[:, None], (BLOCK_M, KP))
    _append(fire, val, tok, lat, out_tok_ptr, out_lat_ptr, out_val_ptr, count_ptr, C, BLOCK_M, KP)


# ----------------------------------------------------------------------------- configs


def _gemm_config(dtype: torch.dtype, kp: int = 0) -> dict:
    """Tile sizes and launch settings. The interpreter gets small tiles (numpy is slow on big ones)."""
    if interpreting():
        return dict(BLOCK_M=16, BLOCK_N=max(32, kp), BLOCK_K=32, num_warps=4, num_stages=1)
    if kp:  # topk keeps [BLOCK_M, KP] int64 keys in registers besides the tile
        return dict(BLOCK_M=32 if kp <= 64 else 16, BLOCK_N=max(128, kp), BLOCK_K=64 if dtype != torch.float32 else 32, num_warps=8, num_stages=3)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)


def _topk_split(n_row_blocks: int, L: int, block_n: int) -> int:
    """Latent slices per row block: enough programs to fill the GPU, each slice at least a few tiles."""
    if interpreting():
        return 2 if L > block_n else 1
    split = 1
    while n_row_blocks * split < 264 and L // (2 * split) >= 4 * block_n and split < 64:
        split *= 2
    return split


# ----------------------------------------------------------------------------- launchers


def default_capacity(N: int, L: int, activation: str, k: int) -> int:
    """C: N*k for topk, else N*min(L, 128) (about 128 firings per token before overflow)."""
    return N * min(k, L) if activation == "topk" else N * min(L, 128)


def _check_encode_args(x, W_enc, b_enc, b_dec, threshold, activation, k) -> None:
    check(x.ndim == 2, f"encode: x must be [N, d], got shape {tuple(x.shape)}")
    check(W_enc.ndim == 2 and W_enc.shape[0] == x.shape[1], f"encode: W_enc must be [d={x.shape[1]}, L], got {tuple(W_enc.shape)}")
    L = W_enc.shape[1]
    check(L >= 1, "encode: W_enc has no latents (L = 0)")
    check(tuple(b_enc.shape) == (L,), f"encode: b_enc must be [L={L}], got {tuple(b_enc.shape)}")
    check(b_dec is None or tuple(b_dec.shape) == (x.shape[1],), f"encode: b_dec must be [d={x.shape[1]}], got {None if b_dec is None else tuple(b_dec.shape)}")
    check(activation in ACTIVATIONS, f"encode: activation {activation!r} is not one of {ACTIVATIONS}")
    check(activation != "jumprelu" or (threshold is not None and tuple(threshold.shape) == (L,)), f"encode: jumprelu needs threshold [L={L}]")
    check(activation != "topk" or k >= 1, f"encode: topk needs k >= 1, got k={k}")
    floats = (torch.float32, torch.bfloat16, torch.float16)
    check(x.dtype in floats and W_enc.dtype in floats, f"encode: x ({x.dtype}) and W_enc ({W_enc.dtype}) must be fp32/bf16/fp16")
    tensors = [t for t in (x, W_enc, b_enc, b_dec, threshold) if t is not None]
    check(len({t.device for t in tensors}) == 1, "encode: x, W_enc, b_enc, b_dec, threshold must be on one device")


def encode_pack_triton(x, W_enc, b_enc, *, b_dec=None, threshold=None, activation="relu", k=0, capacity=None) -> Firings:
    """Triton path of `encode_pack`: entries in any order (valid ones first), no host sync."""
    _check_encode_args(x, W_enc, b_enc, b_dec, threshold, activation, k)
    N, D = x.shape
    L = W_enc.shape[1]
    C = default_capacity(N, L, activation, k) if capacity is None else int(capacity)
    check(C >= 0, f"encode: capacity must be >= 0, got {C}")
    check(L < 2**31, f"encode: L={L} latents exceed the 2^31 the topk key holds")
    check(activation != "topk" or min(k, L) <= TOPK_MAX_K, f"encode: Triton topk supports k <= {TOPK_MAX_K}, got {k} -- use encode_pack_torch")
    W = W_enc
    x = x if x.dtype == W.dtype else x.to(W.dtype)  # the GEMM runs in W_enc's dtype (x is the small operand)
    bias = b_enc.float().contiguous()  # [L]
    bdec = bias if b_dec is None else b_dec.float().contiguous()  # [D]
    dev = x.device
    tok = torch.full((C,), -1, dtype=torch.int64, device=dev)
    lat = torch.full((C,), -1, dtype=torch.int64, device=dev)
    val = torch.zeros(C, dtype=torch.float32, device=dev)
    count = torch.zeros(1, dtype=torch.int64, device=dev)
    if N == 0:
        return Firings(tok, lat, val, count[0])
    ieee = W.dtype == torch.float32
    if activation == "topk":
        ke = min(k, L)
        kp = triton.next_power_of_2(ke)
        cfg = _gemm_config(x.dtype, kp)
        bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
        split = _topk_split(triton.cdiv(N, bm), L, bn)
        slice_len = triton.cdiv(triton.cdiv(L, split), bn) * bn
        part = torch.empty(N, split * kp, dtype=torch.int64, device=dev)  # [N, SPLIT * KP]
        _encode_topk_partial_kernel[(triton.cdiv(N, bm), split)](
            x, W, bdec, bias, part, N, D, L, slice_len,
            x.stride(0), x.stride(1), W.stride(0), W.stride(1),
            HAS_BDEC=b_dec is not None, IEEE=ieee, KP=kp, SPLIT=split, **cfg)
        bm2 = 16 if interpreting() else max(1, min(64, 8192 // (split * kp)))
        _topk_pack_kernel[(triton.cdiv(N, bm2),)](part, tok, lat, val, count, N, ke, C, KP=kp, WIDTH=split * kp, BLOCK_M=bm2)
    else:
        thr = threshold.float().contiguous() if activation == "jumprelu" else bias
        cfg = _gemm_config(x.dtype)
        grid = (triton.cdiv(N, cfg["BLOCK_M"]), triton.cdiv(L, cfg["BLOCK_N"]))
        _encode_pack_kernel[grid](
            x, W, bdec, bias, thr, tok, lat, val, count, N, D, L, C,
            x.stride(0), x.stride(1), W.stride(0), W.stride(1),
            ACT=ACT_CODE[activation], HAS_BDEC=b_dec is not None, IEEE=ieee, **cfg)
    return Firings(tok, lat, val, count[0])


# ----------------------------------------------------------------------------- torch reference


def _pre_activations(x, W_enc, b_enc, b_dec) -> Tensor:
    xf = x.float() if b_dec is None else x.float() - b_dec.float()  # [n, d]
    return torch.addmm(b_enc.float(), xf, W_enc.float())  # [n, L] fp32


def _activate(pre: Tensor, activation: str, threshold, k: int) -> Tensor:
    if activation == "relu":
        return pre.clamp_min(0.0)
    if activation == "jumprelu":
        return torch.where((pre > threshold.float()) & (pre > 0), pre, 0.0)
    if activation == "clamp":
        return pre.clamp(0.0, 1.0)
    # topk: everything above the k-th value, then the first (by latent) of the ties at it
    ke = min(k, pre.shape[1])
    kth = pre.topk(ke, dim=1).values[:, -1:]  # [n, 1]
    above = pre > kth
    at = pre == kth
    keep = above | (at & (at.cumsum(1) <= ke - above.sum(1, keepdim=True)))
    return torch.where(keep, pre.clamp_min(0.0), 0.0)


def _row_chunks(N: int, L: int, max_elems: int = 1 << 24):
    step = max(1, max_elems // max(L, 1))
    for lo in range(0, N, step):
        yield lo, min(N, lo + step)


def encode_dense(x, W_enc, b_enc, *, b_dec=None, threshold=None, activation="relu", k=0) -> Tensor:
    """Dense activations [N, L] float32: the reference every encode path is checked against."""
    _check_encode_args(x, W_enc, b_enc, b_dec, threshold, activation, k)
    return _activate(_pre_activations(x, W_enc, b_enc, b_dec), activation, threshold, k)


def encode_pack_torch(x, W_enc, b_enc, *, b_dec=None, threshold=None, activation="relu", k=0, capacity=None) -> Firings:
    """Reference `encode_pack`: valid entries sorted by (tok, lat), then padding (syncs for `nonzero`)."""
    _check_encode_args(x, W_enc, b_enc, b_dec, threshold, activation, k)
    N, L = x.shape[0], W_enc.shape[1]
    C = default_capacity(N, L, activation, k) if capacity is None else int(capacity)
    check(C >= 0, f"encode: capacity must be >= 0, got {C}")
    toks, lats, vals = [], [], []
    for lo, hi in _row_chunks(N, L):  # bounds the dense block to 64 MiB
        act = _activate(_pre_activations(x[lo:hi], W_enc, b_enc, b_dec), activation, threshold, k)  # [n, L]
        nz = act.nonzero()  # [F, 2] row-major: sorted by (tok, lat)
        toks.append(nz[:, 0] + lo)
        lats.append(nz[:, 1])
        vals.append(act[nz[:, 0], nz[:, 1]])
    dev = x.device
    tok = torch.cat(toks) if toks else torch.zeros(0, dtype=torch.int64, device=dev)
    lat = torch.cat(lats) if lats else torch.zeros(0, dtype=torch.int64, device=dev)
    val = torch.cat(vals) if vals else torch.zeros(0, dtype=torch.float32, device=dev)
    count = torch.tensor(len(tok), dtype=torch.int64, device=dev)
    n = min(len(tok), C)
    pad = C - n
    return Firings(
        torch.cat([tok[:n], tok.new_full((pad,), -1)]),
        torch.cat([lat[:n], lat.new_full((pad,), -1)]),
        torch.cat([val[:n], val.new_zeros(pad)]),
        count,
    )


def encode_pack(x, W_enc, b_enc, *, b_dec=None, threshold=None, activation="relu", k=0, capacity=None) -> Firings:
    """Firings of x under the dictionary (see the module docstring); Triton on GPU, else the reference."""
    fits = activation != "topk" or min(k, W_enc.shape[-1]) <= TOPK_MAX_K
    impl = encode_pack_triton if fits and use_triton(x) else encode_pack_torch
    return impl(x, W_enc, b_enc, b_dec=b_dec, threshold=threshold, activation=activation, k=k, capacity=capacity)


def sort_firings(f: Firings) -> Firings:
    """Valid entries sorted by (tok, lat), padding (tok < 0) last; count unchanged."""
    order = torch.argsort(f.lat, stable=True)
    tok_key = torch.where(f.tok < 0, INT64_MAX, f.tok)
    order = order[torch.argsort(tok_key[order], stable=True)]
    return Firings(f.tok[order], f.lat[order], f.val[order], f.count)
