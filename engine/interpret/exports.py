"""The seed's two output files, written beside the append-only logs (and by `engine.label` into its output folder).

RUN/interpretations/feature_labels.json:
    {"num_features": N, "features": [{"feature_index", "score", "label_llm", "label_search", "label",
     "num_examples", "component_key", "hookpoint", "confidence", "scores": {scorer: {f1, precision,
     recall, balanced_accuracy, auc}}}, ...]}
RUN/interpretations/feature_examples.jsonl, one line per feature:
    {"feature_id", "score", "examples": [{"activation", "sequence_index", "token_position", "text",
     "char_start", "char_end"}, ...]}

feature_index / feature_id is the dictionary index (component_idx). `score` is
the score given with --latents at harvest time (a features JSON file), else
null. label_llm is the latest error-free LLM label ("" if none), label the one
shown (LLM when there is one, else the search label). Examples are the top
examples (highest first) then the random sample, each firing (sequence_index,
token_position) listed once; with `max_examples` (engine.label) only that many
of the highest activations are kept. `num_examples` is the number listed.
`text[char_start:char_end]` is the firing token (offsets count Python str
characters, i.e. Unicode code points); a token that only continues a character
begun in the token before it spans that character. The seed's fields come first; the rest
are additions. Both files are rewritten whole (temp file + rename), so a reader
never sees half a file.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.core.rundir import RunDir, primary, write_atomic
from engine.core.schemas import SCORE_METRICS, ComponentData


def seed_examples(c: ComponentData, max_examples: int | None = None) -> list[dict]:
    """c's examples in the seed's form: top then random, each firing once; the max_examples highest if given."""
    seen, examples = set(), []
    for e in [*c.top_examples, *c.random_examples]:
        if (e.sequence, e.position) in seen:
            continue
        seen.add((e.sequence, e.position))
        start = sum(map(len, e.tokens[:e.firing_index]))
        end = start + len(e.tokens[e.firing_index])
        if end == start and start > 0:  # the token only continues a character begun before it: that character
            start -= 1
        examples.append({"activation": e.activation, "sequence_index": e.sequence, "token_position": e.position,
                         "text": "".join(e.tokens), "char_start": start, "char_end": end})
    if max_examples is not None:  # the seed keeps the max_examples highest activations
        examples = sorted(examples, key=lambda x: -x["activation"])[:max_examples]
    return examples


def write_exports(run_dir: str | Path, out_dir: str | Path | None = None,
                  max_examples: int | None = None) -> tuple[Path, Path]:
    """Write feature_labels.json and feature_examples.jsonl into out_dir (default RUN/interpretations)."""
    run = RunDir(run_dir)
    rc = run.load_config()
    given = {int(k): v for k, v in rc.extra.get("latent_scores", {}).items()}
    explanations = run.read_explanations()
    scores = {lat: {name: {k: getattr(r, k) for k in SCORE_METRICS} for name, r in by.items()}
              for lat, by in run.latest_scores().items()}
    features, lines = [], []
    for c in run.iter_components():
        recs = explanations.get(c.latent)
        if not recs:
            continue
        shown = primary(recs)
        llm = next((e for e in reversed(recs) if e.source == "llm" and e.error is None), None)
        examples = seed_examples(c, max_examples)
        score = given.get(c.component_idx)
        features.append({
            "feature_index": c.component_idx, "score": score, "label_llm": llm.label if llm else "",
            "label_search": shown.search_label, "label": shown.label, "num_examples": len(examples),
            "component_key": c.component_key, "hookpoint": c.hookpoint, "confidence": shown.confidence,
            "scores": scores.get(c.latent, {}),
        })
        lines.append(json.dumps({"feature_id": c.component_idx, "score": score, "examples": examples},
                                ensure_ascii=False))
    out = Path(out_dir) if out_dir is not None else run.interpretations
    labels_path = write_atomic(out / run.feature_labels.name, json.dumps(
        {"num_features": len(features), "features": features}, indent=2, ensure_ascii=False) + "\n", fsync=False)
    examples_path = write_atomic(out / run.feature_examples.name, "".join(line + "\n" for line in lines), fsync=False)
    return labels_path, examples_path
