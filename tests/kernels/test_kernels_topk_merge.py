"""topk_merge: the torch reference against a Python brute force, Triton against the reference.

Values and locations come from small integer sets so ties in value, and in
(value, loc), are common: the tie rule (loc ascending, then old before new,
then candidate index) is what makes the output unique, so both paths must
agree bit for bit, src included.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels.topk_merge as tm_module
from kernels.dispatch import KernelArgError
from tests.helpers.triton_kernels import DEVICE, interpreted  # sets TRITON_INTERPRET first

tm = interpreted(tm_module)


def empty_buffers(L, K, largest):
    fill = -math.inf if largest else math.inf
    return torch.full((L, K), fill, device=DEVICE), torch.full((L, K), -1, dtype=torch.int64, device=DEVICE)


def brute_merge(buf_val, buf_loc, lat, val, loc, largest):
    """Per row: sort old + new by (empty, better value, loc, old first, index); keep K."""
    L, K = len(buf_val), len(buf_val[0])
    new_val, new_loc, src = [], [], []
    sign = -1 if largest else 1
    for r in range(L):
        items = [(buf_loc[r][j] < 0, sign * buf_val[r][j], buf_loc[r][j], 0, j, buf_val[r][j], -1) for j in range(K)]
        items += [(False, sign * val[i], loc[i], 1, i, val[i], i) for i in range(len(lat)) if lat[i] == r]
        items.sort(key=lambda t: t[:5])
        best = items[:K]
        new_val.append([t[5] for t in best])
        new_loc.append([t[2] for t in best])
        src.append([t[6] for t in best])
    return new_val, new_loc, src


def random_candidates(g, M, L, n_vals=4, n_locs=6):
    lat = torch.randint(-1, L, (M,), generator=g)  # -1: padding, ignored
    val = torch.randint(0, n_vals, (M,), generator=g).float() / 2
    loc = torch.randint(0, n_locs, (M,), generator=g)
    return lat.to(DEVICE), val.to(DEVICE), loc.to(DEVICE)


def run_rounds(impl, L, K, largest, rounds, seed):
    g = torch.Generator().manual_seed(seed)
    bv, bl = empty_buffers(L, K, largest)
    out = []
    for _ in range(rounds):
        lat, val, loc = random_candidates(g, int(torch.randint(0, 3 * K * L + 1, (1,), generator=g)), L)
        src = impl(bv, bl, lat, val, loc, largest=largest)
        out.append((bv.clone(), bl.clone(), src, (lat, val, loc)))
    return out


@settings(max_examples=40, deadline=None, derandomize=True)
@given(L=st.integers(1, 5), K=st.integers(1, 5), largest=st.booleans(), seed=st.integers(0, 2**16))
def test_reference_matches_brute_force(L, K, largest, seed):
    bv, bl = empty_buffers(L, K, largest)
    want_v, want_l = bv.tolist(), bl.tolist()
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        lat, val, loc = random_candidates(g, int(torch.randint(0, 4 * K * L, (1,), generator=g)), L)
        src = tm.topk_merge_torch(bv, bl, lat, val, loc, largest=largest)
        want_v, want_l, want_src = brute_merge(want_v, want_l, lat.tolist(), val.tolist(), loc.tolist(), largest)
        assert bv.tolist() == want_v and bl.tolist() == want_l and src.tolist() == want_src


@pytest.mark.parametrize("L,K", [(1, 1), (7, 3), (5, 20), (13, 8)])
@pytest.mark.parametrize("largest", [True, False])
def test_triton_matches_reference(L, K, largest):
    ref = run_rounds(tm.topk_merge_torch, L, K, largest, rounds=3, seed=L * K)
    tri = run_rounds(tm.topk_merge_triton, L, K, largest, rounds=3, seed=L * K)
    for (rv, rl, rs, _), (tv, tl_, ts, _) in zip(ref, tri):
        assert torch.equal(rv, tv) and torch.equal(rl, tl_) and torch.equal(rs, ts)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_no_candidates_leaves_buffers(impl):
    fn = tm.topk_merge_torch if impl == "torch" else tm.topk_merge_triton
    bv, bl = empty_buffers(4, 3, True)
    bv[1, 0], bl[1, 0] = 2.0, 9
    before = bv.clone(), bl.clone()
    none = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    src = fn(bv, bl, none, torch.zeros(0, device=DEVICE), none)
    assert torch.equal(bv, before[0]) and torch.equal(bl, before[1]) and (src == -1).all()
    pad = torch.full((5,), -1, dtype=torch.int64, device=DEVICE)  # only padding candidates
    src = fn(bv, bl, pad, torch.ones(5, device=DEVICE), pad + 3)
    assert torch.equal(bv, before[0]) and (src == -1).all()


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_src_moves_payloads(impl):
    """The caller's pattern: gather candidate payloads with src, keep old ones elsewhere."""
    fn = tm.topk_merge_torch if impl == "torch" else tm.topk_merge_triton
    bv, bl = empty_buffers(2, 2, True)
    fn(bv, bl, *(torch.tensor(v, device=DEVICE) for v in ([0, 1], [5.0, 1.0], [10, 11])))
    src = fn(bv, bl, *(torch.tensor(v, device=DEVICE) for v in ([0, 0, 1], [7.0, 5.0, 0.5], [12, 9, 13])))
    assert bv.tolist() == [[7.0, 5.0], [1.0, 0.5]] and bl.tolist() == [[12, 9], [11, 13]]
    assert src.tolist() == [[0, 1], [-1, 2]]  # (5.0, loc 9) beats the old (5.0, loc 10) on loc


def test_bad_arguments_raise_one_line():
    bv, bl = empty_buffers(2, 2, True)
    lat = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    for fn in (tm.topk_merge_torch, tm.topk_merge_triton):
        with pytest.raises(KernelArgError, match="buf_loc"):
            fn(bv, bl.int(), lat, torch.zeros(3, device=DEVICE), lat)
        with pytest.raises(KernelArgError, match=r"\[M\]"):
            fn(bv, bl, lat, torch.zeros(2, device=DEVICE), lat)


def test_triton_strided_candidates_match_reference():
    """Candidates given as strided views (e.g. columns of a [M, 2] tensor) are read correctly."""
    from kernels.topk_merge import topk_merge_torch, topk_merge_triton

    g = torch.Generator().manual_seed(5)
    L, K, M = 7, 3, 40
    lat = torch.randint(0, L, (M,), generator=g)
    pair = torch.rand(M, 2, generator=g)
    locs = torch.randperm(3 * M, generator=g)[: 2 * M].reshape(M, 2)
    outs = []
    for fn in (topk_merge_torch, topk_merge_triton):
        bv = torch.full((L, K), float("-inf"))
        bl = torch.full((L, K), -1, dtype=torch.int64)
        src = fn(bv, bl, lat, pair[:, 1], locs[:, 1])
        outs.append((bv, bl, src))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1]) and torch.equal(outs[0][2], outs[1][2])
