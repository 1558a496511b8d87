"""Detection: can a judge tell, from the explanation alone, which excerpts the latent fires on?

Held-out activating windows (stratified over top/q1..qN) and as many
non-activating ones (balanced classes, so precision and F1 mean the same for
every latent and match the seed's thresholds) are shuffled together and shown `per_prompt` at a time as
plain text (no highlights); the judge answers 1/0 per excerpt. Truth is
"activating". With logprobs the answer's P(1) gives an AUC.
"""

from __future__ import annotations

from collections import Counter

from engine.score.scorers.base import Details, Row, ScoreConfig, ScoreItem, stratified
from engine.score.scorers.judge import binary_calls, chunks, read_binary


def judged_rows(batches, responses, read) -> tuple[list[Row], Counter]:
    """Rows for batches of (window, truth, stratum) given the responses, one per batch, in order."""
    rows: list[Row] = []
    errors: Counter = Counter()
    for batch, response in zip(batches, responses):
        answers, probs, err = read(response, len(batch))
        if err:
            errors[err] += 1
        for j, (w, truth, stratum) in enumerate(batch):
            rows.append(Row(w.id, stratum, truth, None if answers is None else answers[j], probs[j]))
    return rows, errors


class Detection:
    name = "detection"
    llm = True
    task = "detection"

    def __init__(self, cfg: ScoreConfig):
        self.cfg = cfg

    def batches(self, item: ScoreItem) -> list[list[tuple]]:
        rng = item.rng(self.name)
        pos = stratified(item.activating, self.cfg.n_activating, rng)
        neg = item.negatives[: min(self.cfg.n_negatives, len(pos))]  # balanced classes
        examples = [(w, True, w.stratum) for w in pos] + [(w, False, "neg") for w in neg]
        examples = [examples[i] for i in rng.permutation(len(examples))]
        return chunks(examples, self.cfg.per_prompt)

    def calls(self, item: ScoreItem):
        return binary_calls(self.task, item.label, [[w for w, _, _ in b] for b in self.batches(item)], self.cfg)

    def outcome(self, item: ScoreItem, responses: list) -> Details:
        rows, errors = judged_rows(self.batches(item), responses, read_binary)
        return Details(component_key=item.key, latent=item.latent, scorer=self.name, label=item.label, rows=rows,
                       n_failed=sum(r.prediction is None for r in rows), errors=dict(errors))
