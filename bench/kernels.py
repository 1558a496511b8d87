"""Harvest kernels against their torch references, a naive baseline and the physical floor.

    python -m bench.kernels [--tokens N] [--d-model D] [--latents L] [--l0 64] [--k 64]
    python -m bench.kernels --device cuda    # GPU shapes by default: 4096 tokens, d 4096, 131072 latents, bf16

Providers per op:
  triton     the Triton launcher (CUDA only; the CPU interpreter is not a speed)
  reference  the torch reference (`<op>_torch`, the CPU path of the engine)
  naive      the obvious implementation: dense activations + nonzero, a padded dense
             top-k over every row, a dense lookup table for windows, per-token loops
  floor      max(FLOPs / matmul rate, bytes / copy bandwidth), both rates measured in
             this run: the copy of a 256 MiB buffer and a bare x @ W_enc at the bench shape

Every provider's output is checked against the reference before it is timed. The
table gives each time as a ratio to the reference and to the floor; the last stdout
line is one JSON document with the shapes, device, rates and every row.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from kernels.cooccurrence import cooc_dense_update_torch, cooc_pairs_torch
from kernels.dispatch import triton_available
from kernels.encode_pack import encode_dense, encode_pack_torch, sort_firings
from kernels.token_stats import pair_count_update_torch
from kernels.topk_merge import topk_merge_torch
from kernels.window_gather import gather_windows_torch


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(fn, dev, reps: int, min_time=0.05) -> float:
    """Seconds per fn(): on CUDA the median of triton's do_bench; on CPU the fastest of reps
    runs after a warm-up (the build machine's cores are shared: the minimum is the run with
    the least interference, the median moves by 2x between runs)."""
    if dev.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:  # CUDA without Triton: median of CUDA-event timings
            return cuda_median(fn, max(reps, 10))
        return do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0] / 1e3
    fn()
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < reps or time.perf_counter() < t_end and len(times) < 50:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def cuda_median(fn, reps: int) -> float:
    """Seconds per fn() on CUDA: the median of reps CUDA-event intervals after a warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def measure_rates(x, W, dev, reps) -> tuple[float, float]:
    """Copy bandwidth (bytes read + written per s) and the rate of a bare x @ W (FLOP/s)."""
    src = torch.empty(64 * 2**20, dtype=torch.float32, device=dev)  # 256 MiB
    dst = torch.empty_like(src)
    t_copy = bench(lambda: dst.copy_(src), dev, reps)
    t_mm = bench(lambda: x @ W, dev, reps)
    return 2 * src.numel() * 4 / t_copy, 2 * x.shape[0] * x.shape[1] * W.shape[1] / t_mm


# ----------------------------------------------------------------------------- naive baselines


def naive_encode(x, W, b, **kw):
    """Dense activations, then nonzero (one [N, L] fp32 write + read, a host sync)."""
    act = encode_dense(x, W, b, **kw)
    tok, lat = act.nonzero().unbind(1)
    return tok, lat, act[tok, lat]


def naive_merge(buf_val, buf_loc, lat, val, loc):
    """Scatter candidates into a padded dense [L, K + max_count] block, one topk over every row."""
    L, K = buf_val.shape
    order = torch.argsort(lat, stable=True)
    counts = torch.bincount(lat, minlength=L)
    width = int(counts.max()) if lat.numel() else 0
    rank = torch.arange(lat.numel(), device=lat.device) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    pad_v = torch.full((L, width), -torch.inf, device=lat.device)
    pad_l = torch.full((L, width), -1, dtype=torch.int64, device=lat.device)
    pad_v[lat[order], rank], pad_l[lat[order], rank] = val[order], loc[order]
    v = torch.cat([buf_val, pad_v], 1)
    top = v.topk(K, dim=1)
    buf_loc.copy_(torch.cat([buf_loc, pad_l], 1).gather(1, top.indices))
    buf_val.copy_(top.values)


def naive_windows(tok, lat, val, n_tok, L, q_tok, q_lat, window, seq_len):
    """Dense [n_tok, L] activation table, then a gather per window element."""
    dense = torch.zeros(n_tok, L, device=val.device)
    dense[tok, lat] = val
    t = q_tok[:, None] + torch.arange(-window, window + 1, device=q_tok.device)
    ok = (t >= 0) & (t < n_tok) & (torch.div(t, seq_len, rounding_mode="floor") == (q_tok // seq_len)[:, None])
    return torch.where(ok, dense[t.clamp(0, n_tok - 1), q_lat[:, None]], 0.0)


def naive_pairs(tok, lat):
    """A Python loop over tokens with a meshgrid per token."""
    a, b = [], []
    bounds = torch.unique_consecutive(tok, return_counts=True)[1].cumsum(0).tolist()
    lo = 0
    for hi in bounds:
        ls = lat[lo:hi]
        aa, bb = torch.meshgrid(ls, ls, indexing="ij")
        m = aa != bb
        a.append(aa[m])
        b.append(bb[m])
        lo = hi
    return torch.cat(a), torch.cat(b)


# ----------------------------------------------------------------------------- main


def make_dictionary(a, dev, dtype, g):
    """Random encoder whose latents fire on about l0 of L per token (relu)."""
    x = torch.randn(a.tokens, a.d_model, generator=g).to(dev, dtype)
    W = (torch.randn(a.d_model, a.latents, generator=g) / a.d_model ** 0.5).to(dev, dtype)
    # pre ~ N(0, 1): a bias at the (1 - l0/L) normal quantile leaves about l0 firings per token
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - a.l0 / a.latents))
    b = torch.full((a.latents,), -float(q)).to(dev)
    return x, W, b


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=None, help="rows of x (default 4096 on GPU, 1024 on CPU)")
    p.add_argument("--d-model", type=int, default=None, help="d (default 4096 on GPU, 512 on CPU)")
    p.add_argument("--latents", type=int, default=None, help="L (default 131072 on GPU, 16384 on CPU)")
    p.add_argument("--l0", type=int, default=64, help="target firings per token for relu")
    p.add_argument("--k", type=int, default=64, help="k of the topk encode")
    p.add_argument("--top-k", type=int, default=20, help="K of the per-latent example buffers")
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--cooc-latents", type=int, default=None, help="L of the dense co-occurrence (default 8192 GPU, 1024 CPU)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="x and W_enc (default bf16 GPU, fp32 CPU)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:i] (default cuda when available)")
    a = p.parse_args(argv)
    try:
        dev = torch.device(a.device)
    except RuntimeError:
        print(f"error: --device {a.device!r} is not a device -- use cpu or cuda", file=sys.stderr)
        raise SystemExit(2) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {a.device}: CUDA is not available here (torch {torch.__version__}) -- use --device cpu", file=sys.stderr)
        raise SystemExit(2)
    if dev.type not in ("cpu", "cuda"):
        print(f"error: --device {a.device}: only cpu and cuda are benchmarked -- use one of those", file=sys.stderr)
        raise SystemExit(2)
    gpu = dev.type == "cuda"
    a.tokens = a.tokens or (4096 if gpu else 1024)
    a.d_model = a.d_model or (4096 if gpu else 512)
    a.latents = a.latents or (131072 if gpu else 16384)
    a.cooc_latents = a.cooc_latents or (8192 if gpu else 1024)
    dtype = getattr(torch, a.dtype or ("bfloat16" if gpu else "float32"))
    use_tri = gpu and triton_available()
    if use_tri:
        from kernels.cooccurrence import cooc_dense_update_triton, cooc_pairs_triton
        from kernels.encode_pack import encode_pack_triton
        from kernels.token_stats import pair_count_update_triton
        from kernels.topk_merge import topk_merge_triton
        from kernels.window_gather import gather_windows_triton

    g = torch.Generator().manual_seed(0)
    x, W, b = make_dictionary(a, dev, dtype, g)
    N, d, L = a.tokens, a.d_model, a.latents
    bw, mm_rate = measure_rates(x, W, dev, a.reps)
    rows = []

    def floor(flops=0.0, nbytes=0.0):
        return max(flops / mm_rate, nbytes / bw)

    def run(op, providers, check, fl):
        t_ref = None
        for name, fn in providers:
            ok = check(fn())
            t = bench(fn, dev, a.reps)
            t_ref = t if name == "reference" else t_ref
            rows.append(dict(op=op, provider=name, ms=t * 1e3, ok=bool(ok), floor_ms=fl * 1e3))
        for r in rows:
            if r["op"] == op:
                r["vs_reference"] = r["ms"] / (t_ref * 1e3)
                r["vs_floor"] = r["ms"] / r["floor_ms"] if r["floor_ms"] else None

    # -- encode + pack (relu and topk)
    for act, kw in (("relu", {}), ("topk", {"k": a.k})):
        ref = encode_pack_torch(x, W, b, activation=act, **kw)
        n_ref = int(ref.count)

        def same_firings(out, ref=ref, n_ref=n_ref):
            if isinstance(out, tuple) and len(out) == 3:  # naive: (tok, lat, val)
                return len(out[0]) == n_ref
            s = sort_firings(out)
            return int(s.count) == n_ref and torch.equal(s.lat[:n_ref], ref.lat[:n_ref])

        prov = [("reference", lambda act=act, kw=kw: encode_pack_torch(x, W, b, activation=act, **kw)),
                ("naive", lambda act=act, kw=kw: naive_encode(x, W, b, activation=act, **kw))]
        if use_tri:
            prov.insert(0, ("triton", lambda act=act, kw=kw: encode_pack_triton(x, W, b, activation=act, **kw)))
        # floor: the GEMM; the packed output (20 B per firing) is negligible next to it
        run(f"encode_pack {act}", prov, same_firings, floor(2 * N * d * L, x.numel() * x.element_size() + W.numel() * W.element_size()))

    # -- candidates of one batch: the relu firings
    f = encode_pack_torch(x, W, b)
    n = int(f.count)
    tok, lat, val = f.tok[:n], f.lat[:n], f.val[:n]
    loc = tok.clone()

    # -- topk_merge into [L, K] buffers that already hold one batch
    K = a.top_k
    buf0 = torch.full((L, K), -torch.inf, device=dev), torch.full((L, K), -1, dtype=torch.int64, device=dev)
    topk_merge_torch(*buf0, lat, val + 1.0, loc + N)
    want = [t.clone() for t in buf0]
    topk_merge_torch(*want, lat, val, loc)

    def fresh():
        return buf0[0].clone(), buf0[1].clone()

    def merge_with(fn):
        def go():
            bv, bl = fresh()
            fn(bv, bl, lat, val, loc)
            return bv, bl
        return go

    prov = [("reference", merge_with(topk_merge_torch)), ("naive", merge_with(naive_merge))]
    if use_tri:
        prov.insert(0, ("triton", merge_with(topk_merge_triton)))
    merge_bytes = 2 * 2 * L * K * 12 + n * 20  # buffers read + written (and the clone), candidates
    run("topk_merge", prov, lambda out: torch.equal(out[0], want[0]), floor(nbytes=merge_bytes))

    # -- windows around every stored top-K example of 4096 latents
    keys = tok * L + lat
    sel = torch.randperm(n, generator=g)[: min(n, 4096 * 4)].to(dev)
    q_tok, q_lat = tok[sel], lat[sel]
    want_w = gather_windows_torch(keys, val, L, q_tok, q_lat, window=a.window, seq_len=a.seq_len)
    prov = [("reference", lambda: gather_windows_torch(keys, val, L, q_tok, q_lat, window=a.window, seq_len=a.seq_len)),
            ("naive", lambda: naive_windows(tok, lat, val, N, L, q_tok, q_lat, a.window, a.seq_len))]
    if use_tri:
        prov.insert(0, ("triton", lambda: gather_windows_triton(keys, val, L, q_tok, q_lat, window=a.window, seq_len=a.seq_len)))
    W2 = 2 * a.window + 1
    run("gather_windows", prov, lambda out: torch.equal(out, want_w), floor(nbytes=len(sel) * (W2 * 4 + 16) + n * 12))

    # -- co-occurrence among the first cooc_latents latents
    Lc = min(a.cooc_latents, L)
    m = lat < Lc
    ct, cl = tok[m], lat[m]
    C0 = torch.zeros(Lc, Lc, dtype=torch.int64, device=dev)
    want_c = C0.clone()
    cooc_dense_update_torch(want_c, ct, cl, N)

    def dense_with(fn):
        def go():
            C = C0.clone()
            fn(C, ct, cl, N)
            return C
        return go

    def pairs_into_table():  # the sparse route into the same dense table, for comparison
        C = C0.clone()
        pa, pb = cooc_pairs_torch(ct, cl)
        pair_count_update_torch(C, torch.cat([pa, cl]), torch.cat([pb, cl]))
        return C

    prov = [("reference", dense_with(cooc_dense_update_torch)), ("naive", pairs_into_table)]
    if use_tri:
        prov.insert(0, ("triton", dense_with(cooc_dense_update_triton)))
    run("cooc_dense_update", prov, lambda out: torch.equal(out, want_c), floor(flops=N * Lc * Lc, nbytes=2 * Lc * Lc * 8))

    want_p = cooc_pairs_torch(tok, lat)
    prov = [("reference", lambda: cooc_pairs_torch(tok, lat))]
    if not gpu:
        prov.append(("naive", lambda: naive_pairs(tok, lat)))
    if use_tri:
        prov.insert(0, ("triton", lambda: cooc_pairs_triton(tok, lat)))
    run("cooc_pairs", prov, lambda out: len(out[0]) == len(want_p[0]), floor(nbytes=len(want_p[0]) * 16 + n * 16))

    # -- latent x token counts: the input token at each firing, into a [4096, 8192] int64 table
    V = 8192
    cols = torch.randint(0, V, (n,), generator=g).to(dev)
    T0 = torch.zeros(min(L, 4096), V, dtype=torch.int64, device=dev)
    rl = lat % T0.shape[0]
    want_t = T0.clone()
    pair_count_update_torch(want_t, rl, cols)
    T = T0.clone()

    def count_with(fn):
        def go():  # accumulates into T on every call: checked on the first, timed after
            T.zero_() if go.first else None
            go.first = False
            fn(T, rl, cols)
            return T
        go.first = True
        return go

    def bincount_baseline(T, r, c):
        T += torch.bincount(r * V + c, minlength=T.numel()).view_as(T)

    prov = [("reference", count_with(pair_count_update_torch)), ("naive", count_with(bincount_baseline))]
    if use_tri:
        prov.insert(0, ("triton", count_with(pair_count_update_triton)))
    # floor: read the entries (16 B) and read + write one table element each (16 B)
    run("pair_count_update", prov, lambda out: torch.equal(out, want_t), floor(nbytes=n * 32))

    # -- report
    name = torch.cuda.get_device_name(dev) if gpu else (platform.processor() or platform.machine())
    print(f"device {dev} ({name}), torch {torch.__version__}, {dtype}, N={N} d={d} L={L} "
          f"(relu ~{n / N:.1f} firings/token), cooc L={Lc}, K={K}, window={a.window}")
    print(f"measured: copy {bw / 1e9:.1f} GB/s, x @ W_enc {mm_rate / 1e9:.1f} GFLOP/s"
          + ("" if use_tri else "  (no CUDA: Triton rows skipped)"))
    print(f"{'op':22s} {'provider':10s} {'ms':>10s} {'/ reference':>12s} {'/ floor':>9s} {'floor ms':>9s}  ok")
    for r in rows:
        vf = f"{r['vs_floor']:9.2f}" if r["vs_floor"] else f"{'-':>9s}"
        print(f"{r['op']:22s} {r['provider']:10s} {r['ms']:10.3f} {r['vs_reference']:12.2f} {vf} {r['floor_ms']:9.3f}  {'yes' if r['ok'] else 'NO'}")
    result = dict(bench="kernels", device=str(dev), device_name=name, torch=torch.__version__, dtype=str(dtype).removeprefix("torch."),
                  tokens=N, d_model=d, latents=L, cooc_latents=Lc, top_k=K, k=a.k, l0_target=a.l0, firings=n,
                  copy_bytes_per_s=bw, matmul_flop_per_s=mm_rate, rows=rows)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
