"""The seed's two output files, written beside the append-only logs.

RUN/interpretations/feature_labels.json:
    {"num_features": N, "features": [{"feature_index", "score", "label_llm", "label_search", "label",
     "num_examples", "component_key", "hookpoint", "confidence", "scores": {scorer: {f1, precision,
     recall, balanced_accuracy, auc}}}, ...]}
RUN/interpretations/feature_examples.jsonl, one line per feature:
    {"feature_id", "score", "examples": [{"activation", "sequence_index", "token_position", "text"}, ...]}

feature_index / feature_id is the dictionary index (component_idx). `score` is
the score given with --latents at harvest time (a features JSON file), else
null. label_llm is the latest error-free LLM label ("" if none), label the one
shown (LLM when there is one, else the search label). Examples are the top
examples (highest first) then the random sample. The seed's fields come first;
the rest are additions. Both files are rewritten whole (temp file + rename), so
a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.interpret import iter_components, load_run_config, primary, read_explanations
from engine.resultsio import iter_records
from engine.schemas import ScoreResult

SCORE_FIELDS = ("f1", "precision", "recall", "balanced_accuracy", "auc")


def _atomic_write(path: Path, data: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # shards may write at the same time
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def latest_scores(run_dir: Path) -> dict[int, dict[str, dict]]:
    """latent -> scorer -> the ScoreResult fields of its last error-free result."""
    out: dict[int, dict[str, dict]] = {}
    scores = run_dir / "scores"
    for path in sorted(scores.glob("*.jsonl")) if scores.is_dir() else []:
        for r in iter_records(path, ScoreResult):
            if r.error is None:
                out.setdefault(r.latent, {})[r.scorer] = {k: getattr(r, k) for k in SCORE_FIELDS}
    return out


def write_exports(run_dir: str | Path) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    rc = load_run_config(run_dir)
    given = {int(k): v for k, v in rc.extra.get("latent_scores", {}).items()}
    explanations = read_explanations(run_dir)
    scores = latest_scores(run_dir)
    features, lines = [], []
    for c in iter_components(run_dir):
        recs = explanations.get(c.latent)
        if not recs:
            continue
        shown = primary(recs)
        llm = next((e for e in reversed(recs) if e.source == "llm" and e.error is None), None)
        examples = [*c.top_examples, *c.random_examples]
        score = given.get(c.component_idx)
        features.append({
            "feature_index": c.component_idx, "score": score, "label_llm": llm.label if llm else "",
            "label_search": shown.search_label, "label": shown.label, "num_examples": len(examples),
            "component_key": c.component_key, "hookpoint": c.hookpoint, "confidence": shown.confidence,
            "scores": scores.get(c.latent, {}),
        })
        lines.append(json.dumps({"feature_id": c.component_idx, "score": score, "examples": [
            {"activation": e.activation, "sequence_index": e.sequence, "token_position": e.position,
             "text": "".join(e.tokens)} for e in examples]}, ensure_ascii=False))
    out = run_dir / "interpretations"
    out.mkdir(parents=True, exist_ok=True)
    labels_path, examples_path = out / "feature_labels.json", out / "feature_examples.jsonl"
    _atomic_write(labels_path, json.dumps({"num_features": len(features), "features": features}, indent=2,
                                          ensure_ascii=False) + "\n")
    _atomic_write(examples_path, "".join(line + "\n" for line in lines))
    return labels_path, examples_path
