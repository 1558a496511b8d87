"""Binary-classification metrics, AUC, Pearson correlation and bootstrap intervals.

Conventions (fixed, so numbers from different runs compare):
* `y` is 1 for an activating example, 0 for a non-activating one; `pred` is the
  judge's 0/1 answer; `score` is any number that ranks "more likely activating" higher.
* A ratio whose denominator is zero is 0.0 (precision with no predicted
  positives, recall with no positives, F1 with precision = recall = 0), as in
  scikit-learn's zero_division=0, never NaN, so records stay valid JSON.
* balanced accuracy = (TPR + TNR) / 2, over the classes present (one class: its rate).
* AUC = P(score of a random positive > score of a random negative) + P(tie) / 2,
  computed from average ranks (Mann-Whitney U); None without both classes.
* Pearson r of constant input is NaN (`pearson`); callers decide how to report it.
* `bootstrap_ci` resamples units with replacement (optionally within strata, e.g.
  the two classes, or whole clusters, e.g. latents when pooling) and returns the
  percentile interval of the statistic; resamples where it is undefined are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.core.examples import stratum_order
from engine.core.schemas import Metrics


@dataclass(frozen=True)
class Confusion:
    """Confusion counts; each field is an int, or an int array (one matrix per bootstrap resample)."""

    tp: np.ndarray | int
    fp: np.ndarray | int
    tn: np.ndarray | int
    fn: np.ndarray | int

    @classmethod
    def of(cls, y: np.ndarray, pred: np.ndarray) -> Confusion:
        y, pred = np.asarray(y, dtype=bool), np.asarray(pred, dtype=bool)
        return cls(tp=int((y & pred).sum()), fp=int((~y & pred).sum()), tn=int((~y & ~pred).sum()),
                   fn=int((y & ~pred).sum()))

    @property
    def n(self):
        return self.tp + self.fp + self.tn + self.fn


def _ratio(a, b):
    """a / b, and 0 where b == 0 (elementwise for arrays)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)
    return float(out) if out.ndim == 0 else out


def accuracy(c: Confusion):
    return _ratio(c.tp + c.tn, c.n)


def precision(c: Confusion):
    return _ratio(c.tp, c.tp + c.fp)


def recall(c: Confusion):
    return _ratio(c.tp, c.tp + c.fn)


def specificity(c: Confusion):
    return _ratio(c.tn, c.tn + c.fp)


def f1(c: Confusion):
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)  # = 2PR / (P + R), 0 when P = R = 0


def balanced_accuracy(c: Confusion):
    has_pos = (np.asarray(c.tp) + c.fn) > 0
    has_neg = (np.asarray(c.tn) + c.fp) > 0
    return _ratio(has_pos * recall(c) + has_neg * specificity(c), has_pos.astype(int) + has_neg)


CLASSIFICATION = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "precision": precision,
                  "recall": recall, "f1": f1}
"Metric name -> function of a Confusion (the ScoreResult fields)."


def bootstrap_confusions(y: np.ndarray, pred: np.ndarray, n_boot: int, rng: np.random.Generator,
                         clusters: np.ndarray | None = None) -> Confusion:
    """Confusion matrices of `n_boot` bootstrap resamples, drawn exactly without materialising them.

    Without clusters the resample is stratified by class: the positives are redrawn among the
    positives (tp ~ Binomial(n_pos, tp / n_pos)) and the negatives among the negatives. With
    clusters, whole clusters are redrawn (multinomial counts of each) and their matrices summed.
    """
    y, pred = np.asarray(y, dtype=bool), np.asarray(pred, dtype=bool)
    if clusters is None:
        c = Confusion.of(y, pred)
        n_pos, n_neg = c.tp + c.fn, c.tn + c.fp
        tp = rng.binomial(n_pos, c.tp / n_pos, n_boot) if n_pos else np.zeros(n_boot, dtype=np.int64)
        tn = rng.binomial(n_neg, c.tn / n_neg, n_boot) if n_neg else np.zeros(n_boot, dtype=np.int64)
        return Confusion(tp=tp, fp=n_neg - tn, tn=tn, fn=n_pos - tp)
    keys, inv = np.unique(clusters, return_inverse=True)
    cells = np.zeros((len(keys), 4), dtype=np.int64)  # per cluster: tp fp tn fn
    np.add.at(cells, (inv, 0), y & pred)
    np.add.at(cells, (inv, 1), ~y & pred)
    np.add.at(cells, (inv, 2), ~y & ~pred)
    np.add.at(cells, (inv, 3), y & ~pred)
    picks = rng.multinomial(len(keys), np.full(len(keys), 1.0 / len(keys)), n_boot)  # [B, K]
    tot = picks @ cells  # [B, 4]
    return Confusion(tp=tot[:, 0], fp=tot[:, 1], tn=tot[:, 2], fn=tot[:, 3])


def _percentile_ci(values: np.ndarray, level: float) -> list[float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    n = len(x)
    edges = np.flatnonzero(np.diff(xs) != 0) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [n]])
    run_rank = (starts + ends + 1) / 2.0  # mean of the 1-based positions s+1 .. e of each run of ties
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count one half); None unless both classes are present."""
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r = _ranks(score)
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either input is constant or has fewer than 2 values."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / den) if den > 0 else float("nan")


def bootstrap_ci(stat: Callable[[np.ndarray], float | None], n: int, *, n_boot: int = 1000, seed: int = 0,
                 strata: np.ndarray | None = None, clusters: np.ndarray | None = None,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of `stat(indices)` over bootstrap resamples of the n units.

    strata: resample within each stratum separately (keeps class sizes fixed). clusters:
    resample whole clusters (e.g. latents) instead of units. None when the statistic is
    undefined (None or NaN) on more than half of the resamples.
    """
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(clusters == k) for k in np.unique(clusters)] if clusters is not None else None
    strata_idx = [np.flatnonzero(strata == k) for k in np.unique(strata)] if strata is not None else None
    values = []
    for _ in range(n_boot):
        if groups is not None:
            idx = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        elif strata_idx is not None:
            idx = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata_idx])
        else:
            idx = rng.integers(0, n, n)
        v = stat(idx)
        if v is not None and np.isfinite(v):
            values.append(v)
    if len(values) * 2 < n_boot:
        return None
    lo, hi = _percentile_ci(np.asarray(values), level)
    return lo, hi


def classification_report(y: np.ndarray, pred: np.ndarray, score: np.ndarray | None = None,
                          strata: np.ndarray | None = None, clusters: np.ndarray | None = None,
                          n_boot: int = 1000, seed: int = 0) -> Metrics:
    """Metrics of 0/1 predictions (and AUC of `score` when given) with bootstrap 95% intervals.

    strata: each example's activation stratum ("top", "q1".., "neg"); recall is reported per
      stratum of the activating examples, and the number of examples of every stratum.
    clusters: group ids (latents) for a pooled report, so the intervals resample whole latents
      rather than examples.
    """
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    c = Confusion.of(y, pred)
    values = {k: float(f(c)) for k, f in CLASSIFICATION.items()}
    ci: dict[str, list[float]] = {}
    rng = np.random.default_rng(seed)
    if len(y):
        boot = bootstrap_confusions(y, pred, n_boot, rng, clusters)
        ci = {k: _percentile_ci(np.asarray(f(boot)), 0.95) for k, f in CLASSIFICATION.items()}
    a = None
    if score is not None:
        s = np.asarray(score, dtype=np.float64)
        a = auc(y, s)
        if a is not None:
            iv = bootstrap_ci(lambda i: auc(y[i], s[i]), len(y), n_boot=n_boot, seed=seed,
                              strata=y if clusters is None else None, clusters=clusters)
            if iv is not None:
                ci["auc"] = [iv[0], iv[1]]
    per_q: dict[str, float] = {}
    per_n: dict[str, int] = {}
    if strata is not None:
        strata = np.asarray(strata)
        for q in sorted(set(strata[y].tolist()), key=stratum_order):
            m = y & (strata == q)
            per_q[str(q)] = float(pred[m].mean())
        for q in sorted(set(strata.tolist()), key=stratum_order):
            per_n[str(q)] = int((strata == q).sum())
    return Metrics(n_examples=len(y), auc=a, ci=ci, per_quantile_recall=per_q, per_stratum_n=per_n, **values)
