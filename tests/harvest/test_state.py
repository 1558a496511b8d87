"""HarvestState against a brute-force reference on small random data.

The reference recomputes every statistic from the full dense activation array
with plain loops/numpy; the state sees the same data in batches (and in
shards that are merged), and must agree exactly on counts and samples.
"""


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.harvest.firings import Firings, mix64, reservoir_keys, strongest
from engine.harvest.state import HarvestState, StateConfig


def make_data(n_seq=12, S=10, L=7, V=11, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (n_seq, S), generator=g)
    acts = torch.rand(n_seq, S, L, generator=g) * 5
    acts[torch.rand(n_seq, S, L, generator=g) > density] = 0
    valid = torch.ones(n_seq, S, dtype=torch.bool)
    valid[:, 0] = False  # as --filter-bos would
    return tokens, acts, valid


def firings_of(acts_batch):
    B, S, L = acts_batch.shape
    flat = acts_batch.reshape(B * S, L)
    tok, lat = torch.nonzero(flat > 0, as_tuple=True)  # row-major: sorted by (tok, lat)
    return Firings(tok, lat, flat[tok, lat])


def feed(state, tokens, acts, valid, seqs, batch=4):
    for i in range(0, len(seqs), batch):
        idx = torch.tensor(seqs[i : i + batch])
        state.update(tokens[idx], firings_of(acts[idx]), seq_ids=idx, valid=valid[idx])


def brute(cfg, tokens, acts, valid):
    n_seq, S, L = acts.shape
    W = cfg.window
    a = acts.numpy().astype(np.float64) * valid.numpy()[..., None]
    t = tokens.numpy()
    out = {"n_tokens": int(valid.sum()), "count": (a > 0).sum((0, 1)), "sum": a.sum((0, 1)),
           "max": a.max((0, 1))}
    edges = cfg.hist_edges()  # the float64 edges config.json records
    hist = np.zeros((L, cfg.n_bins), dtype=np.int64)
    firings = {l: [] for l in range(L)}
    for s in range(n_seq):
        for p in range(S):
            for l in range(L):
                v = a[s, p, l]
                if v > 0:
                    b = sum(e <= v for e in edges) - 1  # the bin whose [edge, next edge) holds v
                    hist[l, min(max(b, 0), cfg.n_bins - 1)] += 1
                    firings[l].append((s * S + p, np.float32(v)))
    out["hist"] = hist

    def window(loc, l):
        s, p = divmod(loc, S)
        return [float(np.float32(a[s, q, l])) if 0 <= q < S else 0.0 for q in range(p - W, p + W + 1)]

    out["top"], out["res"] = {}, {}
    for l in range(L):
        ordered = sorted(firings[l], key=lambda f: (-f[1], f[0]))  # by activation, then location
        if cfg.top_chunk:  # the sequential definition: greedy, skipping a chunk already taken
            taken, kept = set(), []
            for loc, v in ordered:
                chunk = (loc // S, (loc % S) // cfg.top_chunk)
                if chunk not in taken:
                    taken.add(chunk)
                    kept.append((loc, v))
            ordered = kept
        top = ordered[: cfg.top_k]
        out["top"][l] = [(loc, float(v), window(loc, l)) for loc, v in top]
        keyed = [(float(reservoir_keys(torch.tensor([loc]), torch.tensor([l]), L, cfg.seed)[0]), loc, v) for loc, v in firings[l]]
        res = sorted(keyed, key=lambda f: (f[0], f[1]))[: cfg.n_random]
        out["res"][l] = [(loc, float(v), window(loc, l)) for _, loc, v in res]
    fire = a > 0
    tv = t[valid.numpy()]
    out["tok_total"] = np.bincount(tv, minlength=cfg.vocab_size)
    in_tok = np.zeros((L, cfg.vocab_size))
    for s, p, l in zip(*np.nonzero(fire)):
        in_tok[l, t[s, p]] += 1
    out["in_tok"] = in_tok
    F = fire.reshape(-1, L).astype(np.int64)
    out["cooc"] = F.T @ F
    return out


def check(state, ref, cfg):
    L = cfg.n_latents
    assert int(state.n_tokens) == ref["n_tokens"]
    np.testing.assert_array_equal(state.count.numpy(), ref["count"])
    np.testing.assert_allclose(state.act_sum.numpy(), ref["sum"], rtol=1e-6)
    np.testing.assert_allclose(state.act_max.numpy(), ref["max"], rtol=1e-6)
    np.testing.assert_array_equal(state.hist.numpy(), ref["hist"])
    np.testing.assert_array_equal(state.tok_total.numpy(), ref["tok_total"])
    for l in range(L):
        n = len(ref["top"][l])
        assert state.top_loc[l, :n].tolist() == [loc for loc, _, _ in ref["top"][l]]
        assert (state.top_loc[l, n:] == -1).all()
        np.testing.assert_allclose(state.top_val[l, :n].numpy(), [v for _, v, _ in ref["top"][l]], rtol=1e-6)
        np.testing.assert_allclose(state.top_win[l, :n].numpy(), np.array([w for _, _, w in ref["top"][l]]).reshape(n, -1), rtol=1e-6)
        m = len(ref["res"][l])
        assert state.res_loc[l, :m].tolist() == [loc for loc, _, _ in ref["res"][l]]
        np.testing.assert_allclose(state.res_val[l, :m].numpy(), [v for _, v, _ in ref["res"][l]], rtol=1e-6)
        np.testing.assert_allclose(state.res_win[l, :m].numpy(), np.array([w for _, _, w in ref["res"][l]]).reshape(m, -1), rtol=1e-6)
    dense_in = torch.zeros(L, cfg.vocab_size, dtype=torch.float64)
    for l in range(L):
        c, w = state.in_tok.row_entries(l)
        dense_in[l, c] = w
    np.testing.assert_array_equal(dense_in.numpy(), ref["in_tok"])
    dense_co = torch.zeros(L, L, dtype=torch.float64)
    for l in range(L):
        c, w = state.cooc.row_entries(l)
        dense_co[l, c] = w.double()
    np.testing.assert_array_equal(dense_co.numpy(), ref["cooc"])


@pytest.mark.parametrize("top_chunk", [0, 3], ids=["all-firings", "one-per-chunk"])
@pytest.mark.parametrize("scatter_cost", [0, 10**12], ids=["pairs", "matmul"])
@pytest.mark.parametrize("mode", ["dense", "sketch"])
def test_single_pass_matches_brute_force(mode, scatter_cost, top_chunk, monkeypatch):
    monkeypatch.setattr("engine.harvest.state.SCATTER_COST", scatter_cost)
    tokens, acts, valid = make_data()
    n_seq, S, L = acts.shape
    # Big sketch: nothing is evicted, so the sketch must also be exact.
    cfg = StateConfig(n_latents=L, vocab_size=11, seq_len=S, top_k=5, n_random=4, window=2, output_stats=False,
                      pair_budget_bytes=0 if mode == "sketch" else 1 << 30, token_slots=16, cooc_slots=16,
                      top_chunk=top_chunk)
    state = HarvestState(cfg)
    feed(state, tokens, acts, valid, list(range(n_seq)))
    assert state.in_tok.mode == mode and state.cooc.mode == mode
    check(state, brute(cfg, tokens, acts, valid), cfg)


@pytest.mark.parametrize("mode", ["dense", "sketch"])
def test_spilled_firings_enter_every_per_latent_statistic_and_no_pair(mode):
    """A per-token cap of 3 of 7 latents: the firings past it travel in the spill, so every statistic but
    co-occurrence equals the brute force over all firings; co-occurrence counts the pairs of the rows."""
    tokens, acts, valid = make_data(density=0.3, seed=5)
    n_seq, S, L = acts.shape
    cfg = StateConfig(n_latents=L, vocab_size=11, seq_len=S, top_k=5, n_random=4, window=2, output_stats=False,
                      pair_budget_bytes=0 if mode == "sketch" else 1 << 30, token_slots=16, cooc_slots=16)
    state = HarvestState(cfg)
    spilled = 0
    for i in range(0, n_seq, 4):
        f = strongest(acts[i:i + 4].reshape(-1, L), per_token=3)
        spilled += int((f.lat[len(f.lat) - f.spilled:] >= 0).sum())
        state.update(tokens[i:i + 4], f, seq_ids=torch.arange(i, i + 4), valid=valid[i:i + 4])
    assert spilled > 0 and int(state.overflow) == 0  # some tokens passed the cap, the spill held them all
    ref = brute(cfg, tokens, acts, valid)
    top3 = acts.topk(3, dim=2).values[..., -1:]
    rows = ((acts >= top3) & (acts > 0)).reshape(-1, L).numpy() & valid.reshape(-1, 1).numpy()
    assert (ref["cooc"] != rows.T.astype(np.int64) @ rows).any()  # the cap changes pairs: the test can fail
    ref["cooc"] = rows.T.astype(np.int64) @ rows
    check(state, ref, cfg)


@settings(max_examples=25, deadline=None)
@given(split=st.lists(st.integers(0, 2), min_size=12, max_size=12), seed=st.integers(0, 1000), batch=st.integers(1, 5),
       top_chunk=st.sampled_from([0, 2, 5]))
def test_merge_of_any_split_equals_single_pass(split, seed, batch, top_chunk):
    tokens, acts, valid = make_data(seed=seed)
    n_seq, S, L = acts.shape
    cfg = StateConfig(n_latents=L, vocab_size=11, seq_len=S, top_k=3, n_random=3, window=1, output_stats=False,
                      top_chunk=top_chunk)
    single = HarvestState(cfg)
    feed(single, tokens, acts, valid, list(range(n_seq)), batch=batch)
    shards = [HarvestState(cfg) for _ in range(3)]
    for k in range(3):
        feed(shards[k], tokens, acts, valid, [i for i in range(n_seq) if split[i] == k], batch=batch)
    merged = shards[0]
    merged.merge(shards[1])
    merged.merge(shards[2])
    for name, t in single.tensors().items():
        assert torch.equal(t, merged.tensors()[name]) or torch.allclose(t.double(), merged.tensors()[name].double(), rtol=1e-9), name


@pytest.mark.parametrize("scatter_cost", [0, 10**12], ids=["pairs", "matmul"])
@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 6), max_size=3, unique=True), seed=st.integers(0, 1000))
def test_latent_row_ranges_equal_the_rows_of_one_state(scatter_cost, cuts, seed):
    """Latent-parallel: states keeping rows [lo, hi) hold exactly those rows of the full state."""
    import engine.harvest.state

    engine.harvest.state.SCATTER_COST, old = scatter_cost, engine.harvest.state.SCATTER_COST
    try:
        tokens, acts, valid = make_data(seed=seed)
        n_seq, S, L = acts.shape
        base = dict(n_latents=L, vocab_size=11, seq_len=S, top_k=3, n_random=3, window=1, output_stats=False)
        full = HarvestState(StateConfig(**base))
        feed(full, tokens, acts, valid, list(range(n_seq)))
        edges = [0, *sorted(cuts), L]
        for lo, hi in zip(edges, edges[1:]):
            part = HarvestState(StateConfig(**base, row_lo=lo, row_hi=hi))
            feed(part, tokens, acts, valid, list(range(n_seq)))
            for name, t in part.tensors().items():
                want = full.tensors()[name]
                if name in ("n_tokens", "tok_total", "out_total"):  # global, every rank has them
                    assert torch.equal(t, want), name
                elif name.endswith(".table") or want.dim() >= 1 and len(want) == L:
                    assert torch.equal(t, want[lo:hi]), (name, lo, hi)
    finally:
        engine.harvest.state.SCATTER_COST = old


def test_sketch_error_bound_holds_under_eviction():
    from engine.harvest.pair_counts import PairCounter

    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 3, (5000,), generator=g)
    cols = (torch.rand(5000, generator=g) ** 3 * 200).long()  # skewed: heavy hitters exist
    exact = torch.zeros(3, 200, dtype=torch.float64)
    exact.index_put_((rows, cols), torch.ones(5000, dtype=torch.float64), accumulate=True)
    pc = PairCounter(3, 200, mode="sketch", slots=8)
    for i in range(0, 5000, 333):
        pc.add(rows[i : i + 333], cols[i : i + 333])
    for r in range(3):
        c, w = pc.row_entries(r)
        err = pc.error_bound(r)
        assert err <= exact[r].sum() / 9 + 1e-9
        assert (w <= exact[r, c]).all() and (w >= exact[r, c] - err).all()
        heavy = torch.nonzero(exact[r] > err).squeeze(1)
        assert set(heavy.tolist()) <= set(c.tolist())


def test_reservoir_inclusion_is_uniform():
    """Chi-square: over many keyed streams, each of N firings lands in the bottom-R equally often."""
    from scipy.stats import chisquare

    N, R, trials = 20, 5, 3000
    hits = np.zeros(N)
    loc = torch.arange(N)
    for seed in range(trials):
        keys = reservoir_keys(loc, torch.zeros(N, dtype=torch.int64), 1, seed)
        hits[torch.argsort(keys)[:R].numpy()] += 1
    p = chisquare(hits).pvalue
    assert p > 1e-3, (p, hits)


def test_mix64_matches_python_reference():
    def ref(x):
        m = (1 << 64) - 1
        x = (x + 0x9E3779B97F4A7C15) & m
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
        return x ^ (x >> 31)

    xs = [0, 1, 12345, 2**40 + 7, 2**62 - 1]
    got = mix64(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert [g & ((1 << 64) - 1) for g in got] == [ref(x) for x in xs]


def test_checkpoint_roundtrip(tmp_path):
    tokens, acts, valid = make_data()
    cfg = StateConfig(n_latents=7, vocab_size=11, seq_len=10, top_k=3, n_random=3, window=1, output_stats=False)
    s = HarvestState(cfg)
    feed(s, tokens, acts, valid, list(range(6)))
    s.save(tmp_path / "ck", {"batches": 2})
    s2, meta = HarvestState.load(tmp_path / "ck", expect=cfg)
    assert meta == {"batches": 2}
    for k, v in s.tensors().items():
        assert torch.equal(v, s2.tensors()[k]), k
    from dataclasses import replace

    from engine.core.errors import UserError

    with pytest.raises(UserError, match=r"cooc_rate 1.0 here 0.25.*--cooc-sample-rate"):  # names value and fix
        HarvestState.load(tmp_path / "ck", expect=replace(cfg, cooc_rate=0.25))


def test_histogram_bins_against_the_recorded_edges():
    """A value just below (or at) an edge lands in the bin the float64 edges of config.json say."""
    cfg = StateConfig(n_latents=1, vocab_size=4, seq_len=128, top_k=2, n_random=2, window=1)
    edges = cfg.hist_edges()
    vals = []
    for e in edges[1:-1]:
        below = np.nextafter(np.float32(e), np.float32(0))  # the largest float32 under the edge
        above = np.nextafter(np.float32(e), np.float32(np.inf))
        vals += [below, above]
    vals = np.array(vals, dtype=np.float32)
    acts = torch.zeros(1, 128, 1)
    acts[0, : len(vals), 0] = torch.from_numpy(vals)
    state = HarvestState(cfg)
    state.update(torch.zeros(1, 128, dtype=torch.int64), firings_of(acts), seq_ids=torch.tensor([0]))
    want = np.zeros(cfg.n_bins, dtype=np.int64)
    for v in vals.astype(np.float64):
        want[max(0, min(cfg.n_bins - 1, int(np.searchsorted(edges, v, side="right")) - 1))] += 1
    np.testing.assert_array_equal(state.hist[0].numpy(), want)
    assert all(int(h) == 2 for h in state.hist[0, 1:-1])  # each inner bin: the value above its low edge and below its high one


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_shards=st.integers(1, 4), slots=st.integers(2, 10))
def test_sketch_guarantee_holds_for_any_split_and_merge_order(seed, n_shards, slots):
    """What the README promises of sketched tables, for any split of the data and any merge order: every
    listed weight w of column c satisfies true - error_bound <= w <= true, every column whose true weight
    exceeds error_bound is listed, and error_bound <= (row total) / (slots + 1). The lists themselves may
    differ between splits (Misra-Gries is not split-invariant), within those bounds."""
    from engine.harvest.pair_counts import PairCounter

    g = torch.Generator().manual_seed(seed)
    M, R, V = 1500, 3, 60
    rows = torch.randint(-1, R, (M,), generator=g)  # -1: padding
    cols = (torch.rand(M, generator=g) ** 2 * V).long()
    wts = torch.rand(M, generator=g, dtype=torch.float64) + 0.01
    exact = torch.zeros(R, V, dtype=torch.float64)
    keep = rows >= 0
    exact.index_put_((rows[keep], cols[keep]), wts[keep], accumulate=True)
    cuts = sorted(torch.randint(0, M, (n_shards - 1,), generator=g).tolist())
    bounds = [0, *cuts, M]
    shards = []
    for lo, hi in zip(bounds, bounds[1:]):
        pc = PairCounter(R, V, mode="sketch", slots=slots)
        for i in range(lo, hi, 97):
            j = min(i + 97, hi)
            pc.add(rows[i:j], cols[i:j], wts[i:j])
        shards.append(pc)
    order = torch.randperm(len(shards), generator=g).tolist()
    merged = shards[order[0]]
    for k in order[1:]:
        merged.merge(shards[k])
    for r in range(R):
        c, w = merged.row_entries(r)
        err = merged.error_bound(r)
        assert err <= exact[r].sum() / (slots + 1) + 1e-9
        assert (w <= exact[r, c] + 1e-9).all() and (w >= exact[r, c] - err - 1e-9).all()
        assert set(torch.nonzero(exact[r] > err + 1e-9).squeeze(1).tolist()) <= set(c.tolist())


def test_library_merges_need_disjoint_sequence_ids():
    """Two Harvesters over different data numbered from 0 would collide on locations: the merge refuses; with
    first_sequence the second's ids follow the first's and the merge equals one pass over both."""
    from engine.harvest.dictionaries import Dictionary
    from engine.harvest.harvester import Harvester

    g = torch.Generator().manual_seed(5)
    d = Dictionary("r", "random:relu", "h", torch.randn(8, 12, generator=g), torch.zeros(12), None, None, "relu", 0, None,
                   8, 12)
    cfg = StateConfig(n_latents=12, vocab_size=11, seq_len=10, top_k=3, n_random=3, window=1, output_stats=False)
    acts = torch.randn(8, 10, 8, generator=g)
    tokens = torch.randint(0, 11, (8, 10), generator=g)
    one = Harvester([d], cfg)
    one.update(acts, tokens)
    a, b = Harvester([d], cfg), Harvester([d], cfg)
    a.update(acts[:4], tokens[:4])
    b.update(acts[4:], tokens[4:])
    with pytest.raises(ValueError, match="same sequence locations"):
        a.state.merge(b.state)
    b = Harvester([d], cfg, first_sequence=4)
    b.update(acts[4:], tokens[4:])
    a.state.merge(b.state)
    for name, t in one.state.tensors().items():
        assert torch.equal(t, a.state.tensors()[name]) or torch.allclose(t.double(), a.state.tensors()[name].double()), name
