"""Fuzzing: does the explanation say *which tokens* fire, not just which texts?

Every excerpt has some tokens marked <<like this>>; the judge answers 1 when
the marks fit the explanation. Correctly marked (truth 1): held-out activating
windows with their firing tokens marked. Wrongly marked (truth 0): a third of
the activating windows (at most n_negatives / 2), with k of their non-firing
tokens marked instead (stratum "fuzzed"), and non-activating windows with k
random tokens marked (stratum "neg"), as many in all as correctly marked ones
(at most n_negatives); k is the mean number
of firing tokens per correctly marked excerpt (at least 1). No window is shown
twice. Recall per stratum is over the correctly marked excerpts.
"""

from __future__ import annotations

import numpy as np

from engine.score.scorers.base import Details, ScoreConfig, ScoreItem, stratified
from engine.score.scorers.detection import judged_rows
from engine.score.scorers.judge import binary_calls, chunks, read_binary


class Marked:
    """A window with a highlight mask, as fuzz.j2 / intruder.j2 render it."""

    def __init__(self, window, mask: list[bool]):
        self.window, self.tokens, self.mask = window, window.tokens, mask
        self.id = window.id


def random_mask(n_tokens: int, k: int, allowed: np.ndarray, rng: np.random.Generator) -> list[bool] | None:
    """k marked positions among `allowed` (bool [n_tokens]); None if fewer are allowed."""
    idx = np.flatnonzero(allowed)
    if len(idx) < k:
        return None
    mask = np.zeros(n_tokens, dtype=bool)
    mask[rng.choice(idx, size=k, replace=False)] = True
    return mask.tolist()


class Fuzz:
    name = "fuzz"
    llm = True

    def __init__(self, cfg: ScoreConfig):
        self.cfg = cfg

    def batches(self, item: ScoreItem) -> list[list[tuple]]:
        rng = item.rng(self.name)
        pos = stratified(item.activating, self.cfg.n_activating, rng)
        n_fuzz = min(len(pos) // 3, self.cfg.n_negatives // 2)
        order = rng.permutation(len(pos)).tolist()
        fuzz_set = set(order[:n_fuzz])
        n_wrong = min(self.cfg.n_negatives, len(pos) - n_fuzz)  # balanced: as many wrong as right
        correct = [Marked(w, [a > 0 for a in w.activations]) for i, w in enumerate(pos) if i not in fuzz_set]
        k = max(1, round(float(np.mean([sum(m.mask) for m in correct])))) if correct else 1
        wrong = []
        for i in sorted(fuzz_set):  # activating windows, marks moved to tokens that do not fire
            w = pos[i]
            mask = random_mask(len(w.tokens), k, np.array([a <= 0 for a in w.activations]), rng)
            if mask is not None:
                wrong.append((Marked(w, mask), "fuzzed"))
        for w in item.negatives[: max(0, n_wrong - n_fuzz)]:  # non-activating windows, random marks
            mask = random_mask(len(w.tokens), k, np.ones(len(w.tokens), dtype=bool), rng)
            if mask is not None:
                wrong.append((Marked(w, mask), "neg"))
        examples = [(m, True, m.window.stratum) for m in correct] + [(m, False, s) for m, s in wrong]
        examples = [examples[i] for i in rng.permutation(len(examples))]
        return chunks(examples, self.cfg.per_prompt)

    def calls(self, item: ScoreItem):
        return binary_calls("fuzz", item.label, [[m for m, _, _ in b] for b in self.batches(item)], self.cfg)

    def outcome(self, item: ScoreItem, responses: list) -> Details:
        rows, errors = judged_rows(self.batches(item), responses, read_binary)
        return Details(component_key=item.key, latent=item.latent, scorer=self.name, label=item.label, rows=rows,
                       n_failed=sum(r.prediction is None for r in rows), errors=dict(errors))
