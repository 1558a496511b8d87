"""From one latent's explanation to its ScoreResult: the held-out item, the judged rows, the metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec
import numpy as np

from clients.usage import Usage
from engine.core.examples import exclude_shown, strata
from engine.core.schemas import ComponentData, Explanation, Sampler, ScoreResult
from engine.score.metrics import bootstrap_ci, classification_report, pearson
from engine.score.scorers.base import Details, ScoreConfig, ScoreItem


def to_result(d: Details, model: str, usage: Usage, n_boot: int = 1000, seed: int = 0, min_judged: float = 1.0,
              sampler: Sampler | None = None) -> ScoreResult:
    """A ScoreResult from one latent's judged rows: the error codes when nothing could be judged, 'incomplete'
    (metrics of the judged rows, not final) when fewer than `min_judged` of the planned rows were."""
    ok = [r for r in d.rows if r.prediction is not None]
    if not ok:
        error = ",".join(sorted(d.errors)) if d.errors else "no_examples"
        return ScoreResult(component_key=d.component_key, latent=d.latent, scorer=d.scorer, label=d.label,
                           n_examples=0, accuracy=0.0, balanced_accuracy=0.0, precision=0.0, recall=0.0, f1=0.0,
                           auc=None, ci={}, per_quantile_recall={}, model=model, usage=usage, error=error,
                           n_planned=len(d.rows), sampler=sampler)
    y = np.array([r.activating for r in ok])
    pred = np.array([r.prediction for r in ok])
    probs = [r.probability for r in ok]
    score = np.array(probs, dtype=np.float64) if all(p is not None for p in probs) else None
    rep = classification_report(y, pred, score, strata=np.array([r.stratum for r in ok]), n_boot=n_boot, seed=seed)
    ci = dict(rep.ci)
    sims = [w for w in d.windows if w.predicted is not None]
    if sims:  # interval of the pooled Pearson r, resampling whole windows
        t = np.concatenate([w.true for w in sims])
        p = np.concatenate([w.predicted for w in sims])
        win = np.repeat(np.arange(len(sims)), [len(w.true) for w in sims])
        iv = bootstrap_ci(lambda i: pearson(t[i], p[i]), len(t), n_boot=n_boot, seed=seed, clusters=win)
        if iv is not None:
            ci["pearson"] = list(iv)
    incomplete = len(ok) < math.ceil(min_judged * len(d.rows) - 1e-9)
    return ScoreResult(**{**msgspec.structs.asdict(rep), "ci": ci}, component_key=d.component_key, latent=d.latent,
                       scorer=d.scorer, label=d.label, model=model, usage=usage,
                       error="incomplete" if incomplete else None, n_planned=len(d.rows), sampler=sampler)


def score_item(c: ComponentData, e: Explanation, negatives, cfg: ScoreConfig, half_width: int,
               n_quantiles: int = 5, n_negatives: int | None = None, sampler: Sampler | None = None) -> ScoreItem:
    """Held-out activating windows (nothing overlapping what the explainer saw), stratified into top and
    q1..q`n_quantiles`, and verified negatives; `sampler` is the record the results carry."""
    windows = strata(c, n_quantiles)
    shown = set(e.example_ids)
    queries = [w for w in windows if w.id in shown]
    held = exclude_shown(windows, e.example_ids, half_width)
    negs = negatives.negatives(c, n_negatives or cfg.n_negatives, queries=queries, exclude_ids=e.example_ids)
    return ScoreItem(key=c.component_key, latent=c.latent, label=e.label, max_act=c.max_activation, activating=held,
                     negatives=negs, seed=cfg.seed, sampler=sampler)


@dataclass
class Waiting:
    """An LLM scorer's requests for one latent, while their responses arrive."""

    scorer: str
    item: ScoreItem
    responses: list
    left: int
    usage: Usage = field(default_factory=Usage)


def add_usage(total: Usage, u: Usage) -> None:
    """Add the tokens and cost of `u` into `total`."""
    for name in Usage.__struct_fields__:
        setattr(total, name, getattr(total, name) + getattr(u, name))
