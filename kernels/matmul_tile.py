"""One [BLOCK_M, BLOCK_N] output tile of a matmul, accumulated in fp32: the inner loop of the GEMM kernels.

    acc = (A[offs_m, :] - shift[None, :]) @ B[:, offs_n]     K walked in BLOCK_K steps

`encode_pack` calls it with A = x, B = W_enc and shift = b_dec; `cooc_dense_update`
with A = F^T (a strided view of F) and B = F, unshifted. Rows and columns outside
mask_m / mask_n, and the ragged end of K, load as 0.

The shift is subtracted in fp32 and the difference rounded back to A's dtype, as
a model running the dictionary in that dtype would. IEEE (fp32 inputs) asks for
exact fp32 products (`input_precision="ieee"`): TF32 would move values across a
firing threshold. Other inputs use tensor cores with fp32 accumulation.

The interpreter (TRITON_INTERPRET=1, numpy) gets bf16 wrong twice: its fp32 -> bf16
cast does not round to nearest, and its bf16 dots are inexact. Under it, bf16 tiles
are rounded on the bits and multiplied in fp32, which is exact for bf16 values.
"""

from kernels.dispatch import interpreting, tl, triton

INTERPRET_BF16_FIX = tl.constexpr(interpreting())  # fixed when this module is imported (see the prose)


@triton.jit
def _load_a(a_ptr, shift_ptr, offs_m, kk, mask_m, K, stride_am, stride_ak, HAS_SHIFT: tl.constexpr):
    """[BM, BK] tile of A (minus shift, in fp32, rounded back to A's dtype as the dot input)."""
    mask_k = kk < K
    a = tl.load(a_ptr + offs_m[:, None] * stride_am + kk[None, :] * stride_ak,
                mask=mask_m[:, None] & mask_k[None, :], other=0.0)
    if HAS_SHIFT:
        diff = a.to(tl.float32) - tl.load(shift_ptr + kk, mask=mask_k, other=0.0)[None, :]
        if INTERPRET_BF16_FIX and a.dtype == tl.bfloat16:
            # the interpreter's fp32 -> bf16 cast does not round to nearest; do it on the bits
            # and keep the (bf16-exact) result in fp32, which _dot takes as it is
            bits = diff.to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
            a = bits.to(tl.float32, bitcast=True)
        else:
            a = diff.to(a.dtype)
    return a


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b with fp32 accumulation; IEEE: exact fp32 products (fp32 inputs, no TF32)."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    elif INTERPRET_BF16_FIX and b.dtype == tl.bfloat16:
        # the interpreter (numpy has no bf16) gets bf16 dots wrong; bf16 -> fp32 is exact
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def matmul_tile(
    a_ptr,  # [M, K] (any strides)
    b_ptr,  # [K, N] same dtype as A
    shift_ptr,  # [K] fp32 subtracted from each row of A (unused without HAS_SHIFT)
    offs_m, offs_n,  # [BLOCK_M], [BLOCK_N] int64 rows of A, columns of B
    mask_m, mask_n,  # in-range rows / columns
    K,
    stride_am, stride_ak, stride_bk, stride_bn,
    HAS_SHIFT: tl.constexpr,
    IEEE: tl.constexpr,  # exact fp32 products for fp32 inputs
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """[BLOCK_M, BLOCK_N] fp32: (A[offs_m, :] - shift) @ B[:, offs_n]."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a = _load_a(a_ptr, shift_ptr, offs_m, kk, mask_m, K, stride_am, stride_ak, HAS_SHIFT)
        b = tl.load(b_ptr + kk[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=(kk[:, None] < K) & mask_n[None, :], other=0.0)
        acc = _dot(a, b, acc, IEEE)
    return acc
