"""RUN/scores/summary.json: per scorer, latents scored, per-latent means, good features, pooled metrics.

Pooled metrics treat every judged example of every latent as one set (micro-average)
and their 95% intervals resample whole latents. A latent is a "good feature" when
F1 > 0.7, precision > 0.8 and recall > 0.6 (the seed's thresholds). A latent whose last
result is incomplete (judged below --min-judged) or failed counts in "incomplete" or
"errors" only, never in the means or pooled metrics.
"""

from __future__ import annotations

import json

import msgspec
import numpy as np

from engine.core.rundir import RunDir, write_atomic
from engine.core.schemas import ScoreResult
from engine.core.shards import Shard, iter_family
from engine.score.metrics import bootstrap_ci, classification_report, pearson
from engine.score.scorers.base import Details

GOOD = {"f1": 0.7, "precision": 0.8, "recall": 0.6}
"The seed's thresholds for a good feature (strictly greater)."
NO_GOOD = {"intruder"}
"Scorers whose precision/recall are not about the explanation (no good-feature count)."


def _last(path, type_, keep: set[int] | None) -> dict:
    out = {}
    for r in iter_family(path, type_):
        out[r.latent] = r
    return {k: v for k, v in out.items() if keep is None or k in keep}


def summarize(run_dir, names: list[str], keep_idx: set[int] | None, n_boot: int = 1000,
              shard: Shard | None = None, min_firings: int = 0) -> dict:
    """Per scorer: latents scored, per-latent means, good features, pooled metrics with latent-bootstrap CIs.
    Reads the main logs and every shard log; with `shard`, only its latents, into summary.shard-k-of-N.json."""
    run = RunDir(run_dir)
    keep, few = None, 0
    if keep_idx is not None or shard is not None or min_firings > 0:
        n = run.load_config().n_latents
        comps = [c for c in run.iter_components(keep_idx) if shard is None or shard.owns(c.latent, n)]
        keep = {c.latent for c in comps if c.firing_count >= min_firings}  # --min-examples: never scored
        few = len(comps) - len(keep)
    out = {}
    for name in names:
        results = _last(run.score_log(name), ScoreResult, keep)
        details = _last(run.score_details(name), Details, keep)
        ok = [r for r in results.values() if r.error is None]
        incomplete = sum(r.error == "incomplete" for r in results.values())
        s: dict = {"latents": len(ok), "errors": len(results) - len(ok) - incomplete, "incomplete": incomplete}
        if few:
            s["skipped_min_examples"] = few
        if ok:
            for m in ("balanced_accuracy", "f1", "precision", "recall"):
                s[f"mean_{m}"] = float(np.mean([getattr(r, m) for r in ok]))
            aucs = [r.auc for r in ok if r.auc is not None]
            s["mean_auc"] = float(np.mean(aucs)) if aucs else None
            if name not in NO_GOOD:
                s["good"] = sum(all(getattr(r, m) > t for m, t in GOOD.items()) for r in ok)
        rows, lat, sims = [], [], []
        failed = 0
        for d in details.values():
            r = results.get(d.latent)
            if r is None or r.error is not None or r.label != d.label:
                continue
            failed += d.n_failed
            for row in d.rows:
                if row.prediction is not None:
                    rows.append(row)
                    lat.append(d.latent)
            sims += [(d.latent, w) for w in d.windows if w.predicted is not None]
            if "group_accuracy" in d.extra:
                s.setdefault("_group", []).append(d.extra["group_accuracy"])
        s["failed_examples"] = failed
        if rows:
            y = np.array([r.activating for r in rows])
            pred = np.array([r.prediction for r in rows])
            probs = [r.probability for r in rows]
            score = np.array(probs, dtype=np.float64) if all(p is not None for p in probs) else None
            rep = classification_report(y, pred, score, np.array([r.stratum for r in rows]), clusters=np.array(lat),
                                        n_boot=n_boot)
            pooled = msgspec.structs.asdict(rep)
            s["pooled"] = {"n": pooled.pop("n_examples"), **pooled}
        if sims:
            t = np.concatenate([w.true for _, w in sims])
            p = np.concatenate([w.predicted for _, w in sims])
            owner = np.repeat([k for k, _ in sims], [len(w.true) for _, w in sims])
            r = pearson(t, p)
            s["pooled_pearson"] = r if np.isfinite(r) else None
            iv = bootstrap_ci(lambda i, t=t, p=p: pearson(t[i], p[i]), len(t), n_boot=min(n_boot, 200), clusters=owner)
            s["pooled_pearson_ci"] = list(iv) if iv else None
        if "_group" in s:
            s["mean_group_accuracy"] = float(np.mean(s.pop("_group")))
        out[name] = s
    path = run.summary(shard)  # scorers summarised by earlier commands keep their entries (a later
    kept = json.loads(path.read_text()) if path.exists() else {}  # `--scorers simulation` adds, never erases)
    write_atomic(path, json.dumps({**kept, **out}, indent=2) + "\n")  # whole file or nothing, beside other shards
    return out


def _fmt(v, ci=None) -> str:
    if v is None:
        return "-"
    text = f"{v:.3f}"
    return f"{text} [{ci[0]:.2f},{ci[1]:.2f}]" if ci else text


def format_summary(summary: dict) -> str:
    head = (f"{'scorer':<11} {'latents':>7}  {'pooled bal.acc [95% CI]':<24} {'F1':<20} {'precision':<20} "
            f"{'recall':<20} {'AUC':<20} good*")
    lines = [head]
    for name, s in summary.items():
        p = s.get("pooled")
        if not p:
            left = [f"{s[k]} {k}" for k in ("errors", "incomplete") if s.get(k)]
            lines.append(f"{name:<11} {s['latents']:>7}  (nothing scored{''.join('; ' + x for x in left)})")
            continue
        ci = p["ci"]
        cells = [_fmt(p[m], ci.get(m)) for m in ("balanced_accuracy", "f1", "precision", "recall", "auc")]
        line = f"{name:<11} {s['latents']:>7}  {cells[0]:<24} {cells[1]:<20} {cells[2]:<20} {cells[3]:<20} {cells[4]:<20} {s.get('good', '-')}"
        extras = []
        if s.get("pooled_pearson") is not None:
            extras.append(f"pooled Pearson r {_fmt(s['pooled_pearson'], s.get('pooled_pearson_ci'))}")
        if "mean_group_accuracy" in s:
            extras.append(f"intruders found {s['mean_group_accuracy']:.3f}")
        if s["failed_examples"] or s["errors"]:
            extras.append(f"{s['failed_examples']} examples unjudged, {s['errors']} latents failed")
        if s.get("skipped_min_examples"):
            extras.append(f"{s['skipped_min_examples']} latents with too few firings not scored (--min-examples)")
        if s.get("incomplete"):
            extras.append(f"{s['incomplete']} latents incomplete, left out (rerun engine.score to finish them)")
        if p["per_quantile_recall"]:
            extras.append("recall by stratum " + " ".join(f"{k}={v:.2f}" for k, v in p["per_quantile_recall"].items()))
        lines.append(line + ("\n" + " " * 21 + "; ".join(extras) if extras else ""))
    lines.append("* good features: F1 > 0.7, precision > 0.8 and recall > 0.6 (per latent). "
                 "Pooled = all judged examples; CIs resample latents.")
    return "\n".join(lines)
