"""gather_windows: the reference against a dict lookup, Triton against the reference (exact: values are copied)."""

import pytest
import torch

import kernels.window_gather as wg_module
from kernels.dispatch import KernelArgError
from tests.helpers.triton_kernels import DEVICE, interpreted  # sets TRITON_INTERPRET first

wg = interpreted(wg_module)
INT64_MAX = torch.iinfo(torch.int64).max


def random_batch(g, n_tok, L, density, n_pad):
    fired = torch.rand(n_tok, L, generator=g) < density
    tok, lat = fired.nonzero().unbind(1)
    keys = torch.cat([tok * L + lat, torch.full((n_pad,), INT64_MAX)])  # sorted, padding last
    vals = torch.cat([torch.rand(len(tok), generator=g) + 0.1, torch.zeros(n_pad)])
    return keys.to(DEVICE), vals.to(DEVICE), tok, lat


def brute(keys, vals, L, q_tok, q_lat, window, seq_len):
    table = {int(k): float(v) for k, v in zip(keys, vals) if int(k) != INT64_MAX}
    out = []
    for t0, l in zip(q_tok.tolist(), q_lat.tolist()):
        row = []
        for t in range(t0 - window, t0 + window + 1):
            same = t >= 0 and t // seq_len == t0 // seq_len
            row.append(table.get(t * L + l, 0.0) if same else 0.0)
        out.append(row)
    return torch.tensor(out, dtype=torch.float32).reshape(len(out), 2 * window + 1)


CASES = [  # n_tok, L, seq_len, window, density
    (24, 5, 6, 2, 0.3),
    (40, 3, 7, 9, 0.5),  # window wider than a sequence
    (10, 1, 10, 0, 0.6),  # window 0, one latent
    (33, 17, 11, 4, 0.05),
]


@pytest.mark.parametrize("n_tok,L,seq_len,window,density", CASES)
def test_reference_and_triton_match_brute_force(n_tok, L, seq_len, window, density):
    g = torch.Generator().manual_seed(n_tok * L)
    keys, vals, tok, lat = random_batch(g, n_tok, L, density, n_pad=3)
    # queries: every firing, plus the first and last token of each sequence for latent 0
    ends = torch.cat([torch.arange(0, n_tok, seq_len), torch.arange(seq_len - 1, n_tok, seq_len)])
    q_tok = torch.cat([tok, ends]).to(DEVICE)
    q_lat = torch.cat([lat, torch.zeros_like(ends)]).to(DEVICE)
    want = brute(keys.cpu(), vals.cpu(), L, q_tok.cpu(), q_lat.cpu(), window, seq_len)
    for fn in (wg.gather_windows_torch, wg.gather_windows_triton):
        got = fn(keys, vals, L, q_tok, q_lat, window=window, seq_len=seq_len)
        assert got.dtype == torch.float32 and torch.equal(got.cpu(), want), fn.__name__


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_no_keys_and_no_queries(impl):
    fn = wg.gather_windows_torch if impl == "torch" else wg.gather_windows_triton
    i64 = dict(dtype=torch.int64, device=DEVICE)
    q = torch.tensor([0, 5], **i64)
    out = fn(torch.zeros(0, **i64), torch.zeros(0, device=DEVICE), 4, q, q, window=2, seq_len=8)
    assert out.shape == (2, 5) and (out == 0).all()
    out = fn(torch.tensor([1, 2], **i64), torch.ones(2, device=DEVICE), 4, q[:0], q[:0], window=2, seq_len=8)
    assert out.shape == (0, 5)


def test_bad_arguments_raise_one_line():
    i64 = torch.zeros(3, dtype=torch.int64)
    for fn in (wg.gather_windows_torch, wg.gather_windows_triton):
        with pytest.raises(KernelArgError, match="keys"):
            fn(i64, torch.zeros(2), 4, i64, i64, window=1, seq_len=4)
        with pytest.raises(KernelArgError, match="seq_len"):
            fn(i64, torch.zeros(3), 4, i64, i64, window=1, seq_len=0)
