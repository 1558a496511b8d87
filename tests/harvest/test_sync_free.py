"""The harvest step (encode + state update) has no data-dependent shape and no host read inside a batch.

Two checks. (1) A dispatch-level recorder runs the step eagerly on batches with different data
and sees every aten op: none may read a value to the host (`_local_scalar_dense`, what .item(),
int() and `if tensor:` dispatch to; `is_nonzero`, `equal`) or size its output by the data
(`nonzero`, `unique`, `masked_select`, `bincount`, `repeat_interleave` by a tensor, indexing
with a boolean mask), and the sequence of ops and output shapes must be identical for every
batch. (2) `torch.compile(step, fullgraph=True, backend="eager")` traces the whole step, and
the traced state equals the eager one bit for bit. (In this torch, dynamo captures
data-dependent ops as unbacked sizes instead of refusing them, so (1) is the proof.)
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.harvest.dictionaries.base import Dictionary
from engine.harvest.state import HarvestState, StateConfig

D_IN, L, B, S, V = 8, 24, 2, 10, 13


def dictionary(activation: str) -> Dictionary:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(D_IN, L, generator=g)
    b = torch.randn(L, generator=g) * 0.1
    thr = torch.rand(L, generator=g) * 0.5 if activation == "jumprelu" else None
    return Dictionary("random", "test", None, W, b, None, thr, activation, 4 if activation == "topk" else 0, None,
                      D_IN, L)


def batches(n: int = 3):
    g = torch.Generator().manual_seed(1)
    for i in range(n):
        acts = torch.randn(B, S, D_IN, generator=g)
        tokens = torch.randint(0, V, (B, S), generator=g)
        probs = torch.softmax(torch.randn(B * S, V, generator=g), dim=-1)
        p, ids = probs.topk(3, dim=-1)
        yield acts, tokens, torch.arange(i * B, (i + 1) * B), tokens != 0, ids, p, probs.sum(0).double()


HOST_READS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::item"}
DATA_SIZED = {"aten::nonzero", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::masked_select",
              "aten::bincount", "aten::argwhere"}


class Recorder(TorchDispatchMode):
    """Every aten op of the code run under it, with its output shapes; and the forbidden ones."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []
        self.forbidden: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name
        masks = args[1] if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_") else ()
        if (name in HOST_READS or name in DATA_SIZED or str(func) == "aten.repeat_interleave.Tensor"
                or any(isinstance(m, torch.Tensor) and m.dtype == torch.bool for m in masks or ())):
            self.forbidden.append(str(func))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.ops.append((str(func), tuple(tuple(o.shape) for o in outs if isinstance(o, torch.Tensor))))
        return out


def harvest(d: Dictionary, tables: str, compiled: bool, recorders: list[Recorder] | None = None) -> HarvestState:
    cfg = StateConfig(n_latents=L, vocab_size=V, seq_len=S, top_k=3, n_random=4, window=2, token_slots=4,
                      cooc_slots=4, pair_budget_bytes=(1 << 30) if tables == "dense" else 0, top_chunk=3,
                      cooc_rate=1.0 if tables != "sampled" else 0.4)
    state = HarvestState(cfg)

    def step(acts, tokens, seq_ids, valid, ids, probs, mass):
        firings = d.encode(acts.reshape(-1, D_IN))
        state.update(tokens, firings, seq_ids=seq_ids, valid=valid, next_top=(ids, probs), next_mass=mass)

    run = torch.compile(step, fullgraph=True, backend="eager") if compiled else step
    for batch in batches():
        if recorders is None:
            run(*batch)
            continue
        rec = Recorder()
        with rec:
            run(*batch)
        recorders.append(rec)
    return state


@pytest.mark.parametrize("tables", ["dense", "sketch", "sampled"])
@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_no_host_read_and_the_same_shapes_for_every_batch(activation, tables):
    recorders: list[Recorder] = []
    harvest(dictionary(activation), tables, compiled=False, recorders=recorders)
    for rec in recorders:
        assert not rec.forbidden, f"host reads / data-sized ops in the step: {sorted(set(rec.forbidden))}"
    first = recorders[0].ops
    assert len(first) > 50  # the recorder really sees the step
    for rec in recorders[1:]:  # different data, same sizes: the same ops with the same shapes
        assert rec.ops == first


def test_the_recorder_catches_host_reads_and_data_sized_ops():
    for fn in (lambda x: x[x > 0].sum(), lambda x: torch.nonzero(x), lambda x: int(x.sum()), lambda x: torch.unique(x),
               lambda x: torch.repeat_interleave(torch.arange(4), (x[:4] > 0).long())):
        rec = Recorder()
        with rec:
            fn(torch.randn(8))
        assert rec.forbidden, fn


@pytest.mark.parametrize("tables", ["dense", "sketch", "sampled"])
@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_step_traces_whole_and_equals_eager(activation, tables):
    torch._dynamo.reset()
    d = dictionary(activation)
    traced = harvest(d, tables, compiled=True)
    eager = harvest(d, tables, compiled=False)
    assert traced.in_tok.mode == traced.cooc.mode == ("sketch" if tables == "sampled" else tables)
    assert int(eager.count.sum()) > 0 and int((eager.top_loc >= 0).sum()) > 0  # the batches really fire
    for name, t in eager.tensors().items():
        torch.testing.assert_close(traced.tensors()[name], t, rtol=0, atol=0, msg=name)
