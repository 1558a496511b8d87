"""Co-occurrence: dense F^T F and sparse pairs, against loops; Triton against the references (integers: exact)."""

from collections import Counter

import pytest
import torch

import kernels.cooccurrence as co_module
from kernels.dispatch import KernelArgError
from tests.helpers.triton_kernels import DEVICE, interpreted  # sets TRITON_INTERPRET first

co = interpreted(co_module)


def random_firings(g, n_tok, L, density, n_pad=2):
    """Firings sorted by (tok, lat), unique per pair, then padding (tok -1, lat -1)."""
    tok, lat = (torch.rand(n_tok, L, generator=g) < density).nonzero().unbind(1)
    pad = torch.full((n_pad,), -1)
    return torch.cat([tok, pad]).to(DEVICE), torch.cat([lat, pad]).to(DEVICE)


def brute_pairs(tok, lat):
    by_tok = {}
    for t, l in zip(tok.tolist(), lat.tolist()):
        if l >= 0:
            by_tok.setdefault(t, []).append(l)
    return Counter((a, b) for ls in by_tok.values() for a in ls for b in ls if a != b)


def brute_dense(tok, lat, L):
    C = torch.zeros(L, L, dtype=torch.int64)
    for (a, b), n in brute_pairs(tok, lat).items():
        C[a, b] += n
    for l in lat.tolist():
        if l >= 0:
            C[l, l] += 1
    return C


CASES = [(30, 70, 0.1), (5, 1, 0.9), (17, 33, 0.4), (9, 40, 1.0)]  # n_tok, L, density (pairs: one interpreted program per firing)


@pytest.mark.parametrize("n_tok,L,density", CASES)
def test_dense_update_matches_loops(n_tok, L, density):
    g = torch.Generator().manual_seed(n_tok + L)
    tok, lat = random_firings(g, n_tok, L, density)
    start = torch.randint(0, 5, (L, L), generator=g).to(DEVICE)  # updates add into existing counts
    want = start.cpu() + brute_dense(tok.cpu(), lat.cpu(), L)
    for fn in (co.cooc_dense_update_torch, co.cooc_dense_update_triton):
        C = start.clone()
        fn(C, tok, lat, n_tok)
        assert torch.equal(C.cpu(), want), fn.__name__


@pytest.mark.parametrize("n_tok,L,density", CASES)
def test_pairs_match_loops(n_tok, L, density):
    g = torch.Generator().manual_seed(n_tok * L)
    tok, lat = random_firings(g, n_tok, L, density)
    want = brute_pairs(tok.cpu(), lat.cpu())
    ref = co.cooc_pairs_torch(tok, lat)
    tri = co.cooc_pairs_triton(tok, lat)
    assert Counter(zip(*(t.tolist() for t in ref))) == want
    assert all(torch.equal(a, b) for a, b in zip(ref, tri))  # same order too
    assert ref[0].dtype == torch.int64 and len(ref[0]) == sum(want.values())


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_empty_inputs(impl):
    dense = co.cooc_dense_update_torch if impl == "torch" else co.cooc_dense_update_triton
    pairs = co.cooc_pairs_torch if impl == "torch" else co.cooc_pairs_triton
    none = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    C = torch.zeros(3, 3, dtype=torch.int64, device=DEVICE)
    dense(C, none, none, 0)
    dense(C, none, none, 4)
    assert (C == 0).all()
    a, b = pairs(none, none)
    assert a.numel() == b.numel() == 0
    one_each = torch.arange(4, device=DEVICE)  # one firing per token: no pairs
    assert pairs(one_each, one_each)[0].numel() == 0


def test_pairs_need_sorted_tokens_and_bad_dense_args():
    t = torch.tensor([1, 0], device=DEVICE)
    for fn in (co.cooc_pairs_torch, co.cooc_pairs_triton):
        with pytest.raises(KernelArgError, match="sorted by tok"):
            fn(t, t)
    for fn in (co.cooc_dense_update_torch, co.cooc_dense_update_triton):
        with pytest.raises(KernelArgError, match="int64"):
            fn(torch.zeros(2, 2, device=DEVICE), t, t, 2)
