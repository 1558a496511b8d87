"""Ranked pair lists (engine.harvest.pair_lists) against a loop over each row's entries, in chunks and not."""

import math

import pytest
import torch

import engine.harvest.pair_lists as pl
from engine.harvest.pair_counts import PairCounter


def _loop(cols, w, n_i, marg, N, jaccard, rate, exclude, top_n=3, min_count=2):
    """One row, spelled out: the listable entries in entry order, each metric sorted stably by value."""
    entries = [(c, x) for c, x in zip(cols, w) if c >= 0 and x >= min_count and marg[c] > 0 and c != exclude]
    out = {}
    for name in ("precision", "recall", "pmi") + (("jaccard",) if jaccard else ()):
        scored = []
        for c, x in entries:
            j, m = x / rate, float(marg[c])
            v = {"precision": j / n_i if jaccard else j / m, "recall": j / m if jaccard else j / n_i,
                 "pmi": math.log(j * N / (n_i * m)), "jaccard": j / (n_i + m - j) if jaccard else 0.0}[name]
            scored.append((c, v, j))
        scored.sort(key=lambda e: -e[1])  # stable: ties keep entry order
        out[name] = [(c, pl.sig(v), pl.sig(j)) for c, v, j in scored[:top_n]]
    return out


@pytest.mark.parametrize("chunk", [1 << 22, 7], ids=["one chunk", "rows in chunks of 1"])
@pytest.mark.parametrize("mode", ["dense", "sketch"])
@pytest.mark.parametrize("asked", [[8, 0, 3, 3, 5], [2, 3, 4, 5, 6, 7]], ids=["any order, repeats", "consecutive"])
def test_row_lists_equal_the_loop(mode, chunk, asked, monkeypatch):
    monkeypatch.setattr(pl, "CHUNK_ENTRIES", chunk)
    g = torch.Generator().manual_seed(0)
    R, V = 9, 6
    pc = PairCounter(R, V, mode=mode, slots=4)
    rows = torch.randint(0, R, (400,), generator=g)
    cols = torch.randint(0, V, (400,), generator=g)
    pc.add(rows, cols, torch.randint(1, 3, (400,), generator=g).double())  # small integers: many ties
    marg = torch.tensor([300.0, 0.0, 120.0, 500.0, 90.0, 410.0])  # column 1 has no marginal: never listed
    n_i = torch.arange(200.0, 200.0 + R)
    exclude = torch.tensor([2, -1, 0, 3, 3, 5, -1, 4, 1])
    for jaccard, rate in ((False, 1.0), (True, 0.25)):
        got = list(pl.row_lists(pc, asked, n_i[asked], marg, 500.0, str, jaccard=jaccard, rate=rate,
                                exclude=exclude[asked], top_n=3))
        assert len(got) == len(asked)
        for r, lists in zip(asked, got):
            if mode == "dense":
                c, w = list(range(V)), pc.table[r].tolist()
            else:
                c, w = pc.keys[r].tolist(), pc.weights[r].tolist()
            want = _loop(c, w, float(n_i[r]), marg, 500.0, jaccard, rate, int(exclude[r]))
            assert {k: [(s.index, s.value, s.count) for s in v] for k, v in lists.items()} == want
            assert all(s.key == str(s.index) for v in lists.values() for s in v)
    assert any(len(v) == 3 for lists in got for v in lists.values())  # lists were cut at top_n
