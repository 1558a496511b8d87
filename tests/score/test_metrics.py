"""engine.metrics against brute-force definitions on small data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.score.metrics import (
    Confusion,
    accuracy,
    auc,
    balanced_accuracy,
    bootstrap_ci,
    bootstrap_confusions,
    classification_report,
    f1,
    pearson,
    precision,
    recall,
)

binary = st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 4)), min_size=1, max_size=40)


def brute(y, pred):
    tp = sum(1 for a, b in zip(y, pred) if a and b)
    fp = sum(1 for a, b in zip(y, pred) if not a and b)
    tn = sum(1 for a, b in zip(y, pred) if not a and not b)
    fn = sum(1 for a, b in zip(y, pred) if a and not b)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    rates = ([tp / (tp + fn)] if tp + fn else []) + ([tn / (tn + fp)] if tn + fp else [])
    return dict(accuracy=(tp + tn) / len(y), precision=p, recall=r, f1=2 * p * r / (p + r) if p + r else 0.0,
                balanced_accuracy=sum(rates) / len(rates))


def pairwise_auc(y, s):
    pos = [b for a, b in zip(y, s) if a]
    neg = [b for a, b in zip(y, s) if not a]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(binary)
def test_classification_metrics_match_definitions(data):
    y = np.array([d[0] for d in data])
    pred = np.array([d[1] for d in data])
    c = Confusion.of(y, pred)
    want = brute(y.tolist(), pred.tolist())
    got = dict(accuracy=accuracy(c), precision=precision(c), recall=recall(c), f1=f1(c),
               balanced_accuracy=balanced_accuracy(c))
    assert got == pytest.approx(want, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(binary)
def test_auc_equals_pairwise_count_with_ties(data):
    y = np.array([d[0] for d in data])
    s = np.array([d[2] for d in data], dtype=float)  # few distinct values: many ties
    want = pairwise_auc(y.tolist(), s.tolist())
    got = auc(y, s)
    assert (got is None) == (want is None)
    if want is not None:
        assert got == pytest.approx(want, abs=1e-12)


def test_auc_extremes_and_pearson():
    y = np.array([1, 1, 0, 0, 1], dtype=bool)
    assert auc(y, np.array([5, 4, 1, 2, 3.0])) == 1.0
    assert auc(y, -np.array([5, 4, 1, 2, 3.0])) == 0.0
    assert auc(y, np.zeros(5)) == 0.5
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x, 2 * x + z) == pytest.approx(np.corrcoef(x, 2 * x + z)[0, 1], abs=1e-12)
    assert np.isnan(pearson(np.ones(5), x[:5])) and np.isnan(pearson([1.0], [2.0]))


def test_zero_division_conventions():
    c = Confusion.of(np.array([1, 1, 0], dtype=bool), np.zeros(3, dtype=bool))  # predicts nothing
    assert precision(c) == 0.0 and recall(c) == 0.0 and f1(c) == 0.0 and balanced_accuracy(c) == 0.5
    only_neg = Confusion.of(np.zeros(4, dtype=bool), np.array([0, 0, 0, 1], dtype=bool))
    assert balanced_accuracy(only_neg) == 0.75 and recall(only_neg) == 0.0


def test_bootstrap_confusions_match_index_resampling():
    """The exact binomial / multinomial draws have the distribution of resampling examples."""
    rng = np.random.default_rng(1)
    y = rng.random(60) < 0.4
    pred = np.where(rng.random(60) < 0.8, y, ~y)
    B = 4000
    fast = bootstrap_confusions(y, pred, B, np.random.default_rng(2))
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    slow_tp, slow_tn = [], []
    r = np.random.default_rng(3)
    for _ in range(B):  # stratified index resampling, by brute force
        i = np.concatenate([r.choice(pos, len(pos)), r.choice(neg, len(neg))])
        c = Confusion.of(y[i], pred[i])
        slow_tp.append(c.tp)
        slow_tn.append(c.tn)
    assert np.all(fast.tp + fast.fn == len(pos)) and np.all(fast.tn + fast.fp == len(neg))
    assert fast.tp.mean() == pytest.approx(np.mean(slow_tp), abs=0.15)
    assert fast.tp.std() == pytest.approx(np.std(slow_tp), rel=0.1)
    assert fast.tn.std() == pytest.approx(np.std(slow_tn), rel=0.1)
    # clusters: each resample is a multiset of whole clusters
    clusters = np.repeat(np.arange(6), 10)
    cb = bootstrap_confusions(y, pred, 500, np.random.default_rng(4), clusters=clusters)
    assert np.all(cb.n == 60)
    per = [Confusion.of(y[clusters == k], pred[clusters == k]) for k in range(6)]
    achievable = {sum(per[k].tp for k in pick) for pick in itertools.combinations_with_replacement(range(6), 6)}
    assert set(cb.tp.tolist()) <= achievable
    assert cb.tp.mean() == pytest.approx(sum(c.tp for c in per), rel=0.05)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_intervals_contain_point_estimates(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 80))
    y = rng.random(n) < 0.5
    y[:2] = [True, False]
    pred = np.where(rng.random(n) < 0.7, y, ~y)
    score = y + rng.normal(scale=1.0, size=n)
    rep = classification_report(y, pred, score, n_boot=400, seed=seed)
    for k in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "auc"):
        lo, hi = rep.ci[k]
        assert lo <= getattr(rep, k) + 1e-9 and getattr(rep, k) <= hi + 1e-9, (k, lo, getattr(rep, k), hi)


def test_report_per_stratum_recall_and_pooled_clusters():
    y = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    pred = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    strata = np.array(["top", "top", "q1", "q1", "neg", "neg"])
    rep = classification_report(y, pred, strata=strata, n_boot=200)
    assert rep.per_quantile_recall == {"q1": 1.0, "top": 0.5}
    assert rep.auc is None and "auc" not in rep.ci
    assert rep.balanced_accuracy == pytest.approx((0.75 + 0.5) / 2)
    pooled = classification_report(y, pred, clusters=np.array([0, 0, 1, 1, 2, 2]), n_boot=200)
    assert pooled.accuracy == rep.accuracy and set(pooled.ci) == {"accuracy", "balanced_accuracy", "precision", "recall", "f1"}


def test_bootstrap_ci_generic():
    x = np.arange(100, dtype=float)
    lo, hi = bootstrap_ci(lambda i: x[i].mean(), 100, n_boot=500, seed=0)
    assert lo < 49.5 < hi and hi - lo < 25
    assert bootstrap_ci(lambda i: None, 10, n_boot=50) is None
    assert bootstrap_ci(lambda i: 1.0, 0) is None
