"""Co-occurrence over a uniform position sample: the sample is a function of the location, the counts are
exactly those of the sampled positions, and the scaled estimate's standard error is what the output says."""

import math
import sys

import numpy as np
import pytest
import torch

from engine.harvest.firings import from_rows, reservoir_keys
from engine.harvest.results import _sample_se
from engine.harvest.state import HarvestState, StateConfig
from engine.harvest.subsample import SALT, choose_rate, sample_cap, sample_positions
from tests.harvest.test_state import feed, make_data


def _sampled(locs: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    """Brute force: each location on its own, by the documented rule."""
    return torch.tensor([float(reservoir_keys(torch.tensor([int(x)]), torch.tensor([0]), 1, seed + SALT)[0]) < rate
                         for x in locs])


def test_positions_are_chosen_by_location_alone():
    locs = torch.arange(5000, 5600)
    idx, keep, excess = sample_positions(locs, 0.3, seed=7)
    assert int(excess) == 0 and len(idx) == sample_cap(600, 0.3) < 600
    chosen = set(locs[idx[keep]].tolist())
    assert chosen == set(locs[_sampled(locs, 0.3, 7)].tolist())
    shuffled = locs[torch.randperm(600, generator=torch.Generator().manual_seed(1))]  # another batch layout
    i2, k2, _ = sample_positions(shuffled, 0.3, seed=7)
    assert set(shuffled[i2[k2]].tolist()) == chosen


def _feed_rows(state, tokens, acts, valid, seqs, batch):
    """As test_state.feed, with the firings laid out per token (from_rows: the TopK / capped layout)."""
    for i in range(0, len(seqs), batch):
        idx = torch.tensor(seqs[i : i + batch])
        a = acts[idx].reshape(-1, acts.shape[-1])
        f = from_rows(torch.arange(a.shape[1]).expand(len(a), -1), a)
        state.update(tokens[idx], f, seq_ids=idx, valid=valid[idx])


@pytest.mark.parametrize("layout", ["sorted", "rows"])
def test_sampled_cooc_counts_the_sampled_positions_exactly_for_any_split(layout, monkeypatch):
    if layout == "rows":
        monkeypatch.setattr(sys.modules[__name__], "feed", _feed_rows)
    tokens, acts, valid = make_data()
    n_seq, S, L = acts.shape
    rate = 0.45
    cfg = StateConfig(n_latents=L, vocab_size=11, seq_len=S, top_k=3, n_random=3, window=1, output_stats=False,
                      pair_budget_bytes=0, cooc_slots=L, token_slots=16, cooc_rate=rate)
    one = HarvestState(cfg)
    feed(one, tokens, acts, valid, list(range(n_seq)), batch=4)
    locs = torch.arange(n_seq * S)
    take = (_sampled(locs, rate, cfg.seed).reshape(n_seq, S) & valid).numpy()
    F = ((acts.numpy() > 0) & take[..., None]).reshape(-1, L).astype(np.int64)
    want = F.T @ F  # co-firings (and, on the diagonal, firings) at sampled positions only
    assert 0 < take.mean() < 0.8
    for state in (one, _merged_split(cfg, tokens, acts, valid)):
        got = np.zeros((L, L))
        for r in range(L):
            c, w = state.cooc.row_entries(r)
            got[r, c.numpy()] = w.numpy()
        np.testing.assert_array_equal(got, want)
        assert int(state.cooc_excess) == 0


def _merged_split(cfg, tokens, acts, valid):
    a, b = HarvestState(cfg), HarvestState(cfg)
    n = len(tokens)
    feed(a, tokens, acts, valid, list(range(0, n, 2)), batch=3)
    feed(b, tokens, acts, valid, list(range(1, n, 2)), batch=5)
    a.merge(b)
    return a


def test_the_scaled_estimate_is_unbiased_with_the_stated_standard_error():
    """c true co-firing positions; over many seeds the estimate sampled / rate has mean c and the spread
    the written standard error says."""
    c, rate = 400, 0.2
    locs = torch.arange(c) * 7 + 3
    est = np.array([float(_sampled(locs, rate, seed).sum()) / rate for seed in range(300)])
    se = math.sqrt(c * rate * (1 - rate)) / rate
    assert abs(est.mean() - c) < 4 * se / math.sqrt(len(est))
    assert 0.8 < est.std() / se < 1.2
    from engine.core.schemas import Scored

    assert _sample_se({"precision": [Scored("k", 3, 0.5, float(c))]}, rate)[3] == float(f"{se:.6g}")
    assert _sample_se({"precision": [Scored("k", 3, 0.5, float(c))]}, 1.0) == {}


def test_auto_rate_samples_only_big_sketched_tables():
    assert choose_rate(0.0, 2048, 16, sketched=False) == 1.0
    assert choose_rate(0.0, 2048, 16, sketched=True) == 1.0  # 524k pairs: under the CPU budget
    assert 4096 * 32 * 32 * choose_rate(0.0, 4096, 32, sketched=True) == 1 << 20  # the 135M bench shape, CPU
    r = choose_rate(0.0, 131072, 64, sketched=True, device="cuda")  # the Llama-8B shape: 537M pairs per batch
    assert 131072 * 64 * 64 * r == 1 << 24
    assert choose_rate(0.0, 131072, 64, sketched=True, device="tpu") == r
    assert choose_rate(0.25, 131072, 64, sketched=True) == 0.25
    assert choose_rate(1.0, 131072, 64, sketched=True) == 1.0  # --cooc-sample-rate 1: every position
