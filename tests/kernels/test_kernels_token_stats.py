"""pair_count_update: the reference against a loop, Triton (atomic adds) against the reference."""

import pytest
import torch

import kernels.token_stats as ts_module
from kernels.dispatch import KernelArgError
from tests.helpers.triton_kernels import DEVICE, interpreted  # sets TRITON_INTERPRET first

ts = interpreted(ts_module)

# Integer tables are exact. Float tables receive the same adds in another order
# (atomics): a cell summing n terms of size <= 1 differs by at most ~n * eps of its dtype.
TOL = {torch.int64: (0, 0), torch.float32: (1e-5, 1.3e-6), torch.float64: (1e-12, 1e-12)}


def brute(table, rows, cols, weights):
    out = table.clone().cpu()
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
        if r >= 0:
            out[r, c] += 1 if weights is None else weights[i].item()
    return out


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("R,V,M", [(7, 13, 500), (1, 1, 3), (3, 1030, 2100)])
def test_reference_and_triton_match_loop(R, V, M, weighted, dtype):
    g = torch.Generator().manual_seed(R * V + M)
    rows = torch.randint(-1, R, (M,), generator=g).to(DEVICE)  # -1: ignored padding
    cols = torch.randint(0, V, (M,), generator=g).to(DEVICE)  # few columns: many duplicates
    weights = None
    if weighted:
        weights = torch.randint(1, 5, (M,), generator=g) if dtype == torch.int64 else torch.rand(M, generator=g, dtype=torch.float64)
        weights = weights.to(DEVICE)
    start = torch.randint(0, 3, (R, V), generator=g).to(DEVICE, dtype)
    want = brute(start, rows, cols, None if weights is None else weights.to(dtype))
    atol, rtol = TOL[dtype]
    for fn in (ts.pair_count_update_torch, ts.pair_count_update_triton):
        table = start.clone()
        fn(table, rows, cols, weights)
        torch.testing.assert_close(table.cpu(), want, atol=atol, rtol=rtol, msg=fn.__name__)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_empty_and_all_padding(impl):
    fn = ts.pair_count_update_torch if impl == "torch" else ts.pair_count_update_triton
    table = torch.zeros(2, 3, dtype=torch.int64, device=DEVICE)
    none = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    fn(table, none, none)
    fn(table, torch.full((4,), -1, device=DEVICE), torch.zeros(4, dtype=torch.int64, device=DEVICE))
    assert (table == 0).all()


def test_bad_arguments_raise_one_line():
    t = torch.zeros(2, 2, dtype=torch.int64)
    i = torch.zeros(3, dtype=torch.int64)
    for fn in (ts.pair_count_update_torch, ts.pair_count_update_triton):
        with pytest.raises(KernelArgError, match="truncate"):
            fn(t, i, i, torch.ones(3))
        with pytest.raises(KernelArgError, match="table must be"):
            fn(t.int(), i, i)
        with pytest.raises(KernelArgError, match="rows"):
            fn(t, i, i[:2])


def test_reference_refuses_columns_outside_the_table_and_takes_strided_tables():
    """A counted entry's column outside [0, V) raises (it would land in the next row of the flat table);
    on an ignored row (-1) any column is ignored; a transposed (non-contiguous) table is updated in place."""
    fn = ts.pair_count_update_torch
    t = torch.zeros(3, 4, dtype=torch.int64)
    for bad in (4, -1):
        with pytest.raises(IndexError):
            fn(t, torch.tensor([0]), torch.tensor([bad]))
    with pytest.raises(IndexError):
        fn(t, torch.tensor([3]), torch.tensor([0]))  # a row past the table
    fn(t, torch.tensor([-1, -1]), torch.tensor([9, -5]))
    assert (t == 0).all()
    base = torch.zeros(4, 3, dtype=torch.float64)
    view = base.T  # [3, 4], strides (1, 3)
    fn(view, torch.tensor([0, 2, 2, -1]), torch.tensor([3, 1, 1, 0]), torch.tensor([0.5, 1.0, 2.0, 7.0], dtype=torch.float64))
    want = torch.zeros(3, 4, dtype=torch.float64)
    want[0, 3], want[2, 1] = 0.5, 3.0
    assert torch.equal(base.T, want)
