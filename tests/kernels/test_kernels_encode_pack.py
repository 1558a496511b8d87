"""encode_pack: the torch reference against loops, the Triton launcher against the reference.

Exact checks use "dyadic" inputs (small multiples of 1/2, 1/4, 1/8): every
product and partial sum is exactly representable in fp32 and in bf16/fp16
inputs, so any summation order gives the same bits and firing sets, ties and
top-k choices must agree exactly. Random-normal inputs then check the general
case within a tolerance (see TOL).
"""

import pytest
import torch

import kernels.encode_pack as ep_module
from kernels.dispatch import KernelArgError, use_triton
from tests.helpers.triton_kernels import DEVICE, densify, interpreted  # sets TRITON_INTERPRET first

ep = interpreted(ep_module)

# Triton vs the reference on the same inputs, for pre-activations of unit scale. Both
# accumulate in fp32, but Triton rounds (x - b_dec) to the weights' dtype before the
# GEMM (as a model running the dictionary in that dtype does) where the reference
# subtracts in fp32. So the test (1) compares Triton with torch doing the same rounding
# (fp32 tolerance: only the summation order differs), (2) requires Triton's error against
# the reference to be within 2x that of torch with the rounding, and (3) bounds it:
# d terms each off by up to half an ulp (2^-9 bf16, 2^-12 fp16) of |x - b_dec| ~ 3,
# times |w| ~ 1/sqrt(d), summed with random signs: ~ 3 * half-ulp, and 4x that margin.
# fp32 differs only in summation order (~ sqrt(d) * 2^-24 of the terms).
TOL = {  # dtype: (atol, rtol)
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (12 * 2 ** -9, 2 ** -8),
    torch.float16: (12 * 2 ** -12, 2 ** -11),
}
# The reference on rounded inputs vs the fp32 truth: the input rounding (2^-8 bf16, 2^-11 fp16).
ROUNDING_TOL = {torch.float32: 1e-6, torch.bfloat16: 2 ** -8 * 4, torch.float16: 2 ** -11 * 4}


def dyadic(shape, denom, lo, hi, g):
    return (torch.randint(lo, hi + 1, shape, generator=g).float() / denom).to(DEVICE)


def dyadic_dict(N, d, L, seed=0, dtype=torch.float32, threshold=False):
    g = torch.Generator().manual_seed(seed)
    p = dict(
        x=dyadic((N, d), 2, -2, 2, g).to(dtype),  # {-1, -0.5, 0, 0.5, 1}
        W_enc=dyadic((d, L), 4, -4, 4, g).to(dtype),
        b_enc=dyadic((L,), 8, -8, 4, g),
        b_dec=dyadic((d,), 2, -1, 1, g).to(dtype),
    )
    if threshold:
        p["threshold"] = dyadic((L,), 16, 1, 9, g) + 1 / 32  # never equal to a (1/8-grid) pre
    return p


def kwargs_for(act, p, k):
    kw = {key: p[key] for key in ("b_dec", "threshold") if key in p}
    return dict(activation=act, k=k, **kw)


# ----------------------------------------------------------------------------- reference vs loops


def brute_dense(x, W, b, b_dec, thr, act, k):
    N, d = x.shape
    L = W.shape[1]
    out = [[0.0] * L for _ in range(N)]
    for n in range(N):
        pre = [sum((float(x[n, i]) - float(b_dec[i])) * float(W[i, l]) for i in range(d)) + float(b[l]) for l in range(L)]
        if act == "topk":
            top = sorted(range(L), key=lambda l: (-pre[l], l))[:k]
            for l in top:
                out[n][l] = max(pre[l], 0.0)
            continue
        for l in range(L):
            if act == "relu":
                out[n][l] = max(pre[l], 0.0)
            elif act == "jumprelu":
                out[n][l] = pre[l] if pre[l] > float(thr[l]) and pre[l] > 0 else 0.0
            else:
                out[n][l] = min(max(pre[l], 0.0), 1.0)
    return torch.tensor(out, dtype=torch.float32).reshape(N, L)


@pytest.mark.parametrize("act,k", [("relu", 0), ("jumprelu", 0), ("clamp", 0), ("topk", 1), ("topk", 3), ("topk", 9)])
def test_reference_matches_loops(act, k):
    p = dyadic_dict(6, 5, 9, seed=1, threshold=True)
    p["W_enc"][:, 4] = p["W_enc"][:, 2]  # duplicate latents: topk must keep the lower index on ties
    p["b_enc"][4] = p["b_enc"][2]
    want = brute_dense(p["x"].cpu(), p["W_enc"].cpu(), p["b_enc"].cpu(), p["b_dec"].cpu(), p["threshold"].cpu(), act, k)
    dense = ep.encode_dense(p["x"], p["W_enc"], p["b_enc"], **kwargs_for(act, p, k))
    torch.testing.assert_close(dense.cpu(), want, atol=0, rtol=0)
    f = ep.encode_pack_torch(p["x"], p["W_enc"], p["b_enc"], **kwargs_for(act, p, k))
    nz = want.nonzero()
    n = len(nz)
    assert int(f.count) == n
    assert f.tok[:n].tolist() == nz[:, 0].tolist() and f.lat[:n].tolist() == nz[:, 1].tolist()  # sorted by (tok, lat)
    assert f.val[:n].tolist() == want[nz[:, 0], nz[:, 1]].tolist()
    assert (f.tok[n:] == -1).all() and (f.lat[n:] == -1).all() and (f.val[n:] == 0).all()


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_topk_ties_keep_lowest_latents(impl):
    fn = ep.encode_pack_torch if impl == "torch" else ep.encode_pack_triton
    x = torch.ones(2, 1, device=DEVICE)
    W = torch.tensor([[1.0, 3.0, 2.0, 2.0, 2.0, 0.5]], device=DEVICE)  # row: 1, 3, 2, 2, 2, .5
    f = ep.sort_firings(fn(x, W, torch.zeros(6, device=DEVICE), activation="topk", k=3))
    assert int(f.count) == 6 and f.lat.tolist() == [1, 2, 3, 1, 2, 3]
    # a tie across the two latent slices of the Triton path (slices of 64 at L = 70)
    W = torch.full((1, 70), 0.5, device=DEVICE)
    W[0, [2, 65, 66]] = 1.0
    f = ep.sort_firings(fn(x, W, torch.zeros(70, device=DEVICE), activation="topk", k=2))
    assert f.lat.tolist() == [2, 65, 2, 65]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_low_precision_inputs_within_rounding(dtype):
    g = torch.Generator().manual_seed(3)
    x, W, b = torch.randn(8, 32, generator=g), torch.randn(32, 16, generator=g) / 6, torch.randn(16, generator=g)
    truth = ep.encode_dense(x.to(DEVICE), W.to(DEVICE), b.to(DEVICE))
    low = ep.encode_dense(x.to(DEVICE, dtype), W.to(DEVICE, dtype), b.to(DEVICE))
    scale = float(truth.abs().max())
    torch.testing.assert_close(low, truth, atol=ROUNDING_TOL[dtype] * scale, rtol=0)


# ----------------------------------------------------------------------------- triton vs reference

SHAPES = [(37, 40, 70), (1, 1, 1), (16, 8, 1), (5, 33, 129)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", ["relu", "jumprelu", "clamp"])
@pytest.mark.parametrize("N,d,L", SHAPES)
def test_triton_exact_on_dyadic_inputs(N, d, L, act, dtype):
    p = dyadic_dict(N, d, L, seed=N + L, dtype=dtype, threshold=True)
    kw = kwargs_for(act, p, 0)
    ref = ep.encode_pack_torch(p["x"], p["W_enc"], p["b_enc"], **kw)
    tri = ep.sort_firings(ep.encode_pack_triton(p["x"], p["W_enc"], p["b_enc"], **kw))
    assert int(tri.count) == int(ref.count)
    for a, b in zip(tri, ref):
        assert torch.equal(a, b)


# topk runs its sort in the interpreter slowly (~0.5 s per sort): few, small cases.
@pytest.mark.parametrize("N,d,L,k,dtype", [
    (16, 8, 70, 5, torch.float32),  # two latent slices, ragged last tile
    (3, 5, 1, 1, torch.bfloat16),  # one latent
    (9, 4, 20, 32, torch.float16),  # k > L: every positive latent
])
def test_triton_topk_exact_on_dyadic_inputs(N, d, L, k, dtype):
    p = dyadic_dict(N, d, L, seed=7, dtype=dtype)
    if L > 3:
        p["W_enc"][:, 3], p["b_enc"][3] = p["W_enc"][:, 0], p["b_enc"][0]  # ties across latents
    kw = dict(b_dec=p["b_dec"], activation="topk", k=k)
    ref = ep.encode_pack_torch(p["x"], p["W_enc"], p["b_enc"], **kw)
    tri = ep.sort_firings(ep.encode_pack_triton(p["x"], p["W_enc"], p["b_enc"], **kw))
    assert int(tri.count) == int(ref.count) > 0
    for a, b in zip(tri, ref):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_random_inputs_within_tolerance(dtype):
    g = torch.Generator().manual_seed(11)
    N, d, L = 33, 48, 50
    x = torch.randn(N, d, generator=g).to(DEVICE, dtype)
    W = (torch.randn(d, L, generator=g) / d ** 0.5).to(DEVICE, dtype)  # pre ~ N(0, 1)
    b, b_dec = torch.randn(L, generator=g).to(DEVICE) * 0.1, torch.randn(d, generator=g).to(DEVICE) * 0.3
    ref = ep.encode_dense(x, W, b, b_dec=b_dec)
    tri = ep.encode_pack_triton(x, W, b, b_dec=b_dec)
    atol, rtol = TOL[dtype]
    # an entry within atol of 0 may fire on one side only; its value is then below atol
    got = densify(tri.tok, tri.lat, tri.val, N, L)
    same_rounding = ep.encode_dense((x.float() - b_dec).to(dtype), W, b)  # torch rounding (x - b_dec) too
    torch.testing.assert_close(got, same_rounding, atol=TOL[torch.float32][0], rtol=TOL[torch.float32][1])
    err, err_torch = float((got - ref).abs().max()), float((same_rounding - ref).abs().max())
    assert err <= 2 * err_torch + 1e-5, (err, err_torch)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, ref, atol=atol, rtol=rtol)
    # an entry within the error of 0 may fire on one side only
    assert abs(int(tri.count) - int((ref > 0).sum())) <= int((ref.abs() < max(err, 1e-6)).sum())


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_empty_batch(impl):
    fn = ep.encode_pack_torch if impl == "torch" else ep.encode_pack_triton
    x, W, b = torch.zeros(0, 4, device=DEVICE), torch.ones(4, 6, device=DEVICE), torch.ones(6, device=DEVICE)
    for act, k in [("relu", 0), ("topk", 2)]:
        f = fn(x, W, b, activation=act, k=k, capacity=3)
        assert int(f.count) == 0 and f.tok.tolist() == [-1] * 3 and f.lat.tolist() == [-1] * 3


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("act,k", [("relu", 0), ("topk", 2)])
def test_no_firings(impl, act, k):
    fn = ep.encode_pack_torch if impl == "torch" else ep.encode_pack_triton
    x, W, b = torch.zeros(5, 4, device=DEVICE), torch.ones(4, 6, device=DEVICE), -torch.ones(6, device=DEVICE)
    f = fn(x, W, b, activation=act, k=k)
    assert int(f.count) == 0 and (f.tok == -1).all() and (f.val == 0).all()
    assert f.tok.numel() == (5 * 2 if act == "topk" else 5 * 6)  # default capacity


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_all_firing_fills_default_capacity(impl):
    fn = ep.encode_pack_torch if impl == "torch" else ep.encode_pack_triton
    N, L = 7, 45
    x, W, b = torch.ones(N, 3, device=DEVICE), torch.ones(3, L, device=DEVICE) / 4, torch.arange(L, device=DEVICE) / 64
    f = ep.sort_firings(fn(x, W, b))
    assert int(f.count) == N * L == f.tok.numel()
    assert f.tok.tolist() == [n for n in range(N) for _ in range(L)] and f.lat.tolist() == list(range(L)) * N
    torch.testing.assert_close(f.val, (0.75 + torch.arange(L, device=DEVICE) / 64).repeat(N))


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("capacity", [0, 10])
def test_overflow_reports_true_count_and_keeps_valid_entries(impl, capacity):
    fn = ep.encode_pack_torch if impl == "torch" else ep.encode_pack_triton
    p = dyadic_dict(20, 6, 40, seed=5)
    dense = ep.encode_dense(p["x"], p["W_enc"], p["b_enc"], b_dec=p["b_dec"])
    f = fn(p["x"], p["W_enc"], p["b_enc"], b_dec=p["b_dec"], capacity=capacity)
    assert int(f.count) == int((dense > 0).sum()) > capacity
    assert f.tok.numel() == capacity and (f.tok >= 0).all()
    assert len(set(zip(f.tok.tolist(), f.lat.tolist()))) == capacity  # distinct firings
    assert torch.equal(dense[f.tok, f.lat], f.val)


def test_sort_firings_orders_valid_entries_then_padding():
    f = ep.Firings(torch.tensor([3, -1, 0, 3, 0]), torch.tensor([1, -1, 5, 0, 2]), torch.tensor([1.0, 0, 2, 3, 4]), torch.tensor(4))
    s = ep.sort_firings(f)
    assert s.tok.tolist() == [0, 0, 3, 3, -1] and s.lat.tolist() == [2, 5, 0, 1, -1] and s.val.tolist() == [4, 2, 3, 1, 0]


@pytest.mark.parametrize("bad,msg", [
    (dict(x=torch.ones(3)), "x must be"),
    (dict(W_enc=torch.ones(5, 6)), "W_enc must be"),
    (dict(b_enc=torch.ones(5)), "b_enc must be"),
    (dict(activation="gelu"), "activation"),
    (dict(activation="jumprelu"), "threshold"),
    (dict(activation="topk"), "k >= 1"),
])
def test_bad_arguments_raise_one_line(bad, msg):
    args = dict(x=torch.ones(2, 4), W_enc=torch.ones(4, 6), b_enc=torch.ones(6)) | bad
    x, W, b = args.pop("x"), args.pop("W_enc"), args.pop("b_enc")
    for fn in (ep.encode_pack_torch, ep.encode_pack_triton):
        with pytest.raises(KernelArgError, match=msg):
            fn(x, W, b, **args)


def test_dispatch_uses_reference_for_cpu_tensors_by_default():
    from kernels import dispatch

    if dispatch.MODE == "auto":
        assert not use_triton(torch.ones(1))


def test_env_var_forces_either_path():
    """AUTOINTERP_KERNELS is read once at import: check both choices in fresh interpreters."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, kernels.encode_pack as ep\n"
        "from kernels.dispatch import use_triton\n"
        "x, W, b = torch.ones(3, 2), torch.ones(2, 4), torch.zeros(4)\n"
        "print(use_triton(x), int(ep.encode_pack(x, W, b).count))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for mode, want in (("triton", "True 12"), ("torch", "False 12")):
        env = dict(os.environ, AUTOINTERP_KERNELS=mode, TRITON_INTERPRET="1", PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=root)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == want
