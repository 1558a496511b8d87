"""Intruder: without any explanation, can a judge find the excerpt that does not belong?

Each group holds `per_prompt - 1` held-out activating windows of one stratum
(cycling through the strata; strata too small for a group are pooled and
grouped by activation) with their firing tokens marked, and one
non-activating window with k random tokens marked (k = the group's mean number
of marks), shuffled. The judge names the intruder; the schema allows only the numbers 1..group size. `extra["group_accuracy"]` is
the share of groups whose intruder was found (chance 1 / per_prompt). Rows are
per excerpt, truth = activating, prediction = "not picked as the intruder", so
balanced accuracy is 0.5 for a random judge.
"""

from __future__ import annotations

from collections import Counter

import msgspec
import numpy as np

from clients.structured import provider_schema
from engine.interpret.prompts import render
from engine.score.scorers.base import Details, LLMCall, Row, ScoreConfig, ScoreItem
from engine.score.scorers.fuzz import Marked, random_mask
from engine.score.scorers.judge import decode_json


class IntruderAnswer(msgspec.Struct, forbid_unknown_fields=True):
    intruder: int
    "1-based number of the odd excerpt."


SCHEMA = provider_schema(IntruderAnswer)


def intruder_schema(n: int) -> dict:
    """SCHEMA with the answer bounded to the excerpt numbers 1..n."""
    return {**SCHEMA, "properties": {"intruder": {"type": "integer", "enum": list(range(1, n + 1))}}}


class Intruder:
    name = "intruder"
    llm = True

    def __init__(self, cfg: ScoreConfig):
        self.cfg = cfg

    def groups(self, item: ScoreItem) -> list[tuple[list[Marked], int]]:
        """(excerpts, 0-based index of the intruder) per group."""
        rng = item.rng(self.name)
        size = max(2, self.cfg.per_prompt) - 1
        by: dict[str, list] = {}
        for w in item.activating:
            by.setdefault(w.stratum, []).append(w)
        queues = {k: [v[i] for i in rng.permutation(len(v))] for k, v in sorted(by.items())}
        leftovers = []
        for q in queues.values():  # strata too small for a group are pooled, strongest with strongest
            if len(q) < size:
                leftovers += q
                q.clear()
        if len(leftovers) >= size:
            queues["mixed"] = sorted(leftovers, key=lambda w: max(w.activations))[::-1][: len(leftovers) // size * size]
            queues["mixed"].reverse()  # pop() takes from the end: strongest first
        out = []
        for neg in item.negatives[: self.cfg.n_negatives]:
            ready = [k for k, q in queues.items() if len(q) >= size]
            if not ready:
                break
            k = ready[len(out) % len(ready)]
            members = [Marked(w, [a > 0 for a in w.activations]) for w in (queues[k].pop() for _ in range(size))]
            n_marks = max(1, round(float(np.mean([sum(m.mask) for m in members]))))
            mask = random_mask(len(neg.tokens), min(n_marks, len(neg.tokens)), np.ones(len(neg.tokens), dtype=bool), rng)
            group = members + [Marked(neg, mask)]
            order = rng.permutation(len(group)).tolist()
            out.append(([group[i] for i in order], order.index(len(group) - 1)))
        return out

    def calls(self, item: ScoreItem):
        return [LLMCall(render("intruder", examples=g), intruder_schema(len(g)), "intruder", self.cfg.max_tokens)
                for g, _ in self.groups(item)]

    def outcome(self, item: ScoreItem, responses: list) -> Details:
        rows, errors, found = [], Counter(), []
        for (group, intruder), response in zip(self.groups(item), responses):
            pick, err = None, None
            if response is None or response.error:
                err = "missing" if response is None else response.error
            else:
                answer = decode_json(response.text, response.parsed, IntruderAnswer)
                if answer is None or not 1 <= answer.intruder <= len(group):
                    err = "invalid_json" if answer is None else "out_of_range"
                else:
                    pick = answer.intruder - 1
            if err:
                errors[err] += 1
            else:
                found.append(pick == intruder)
            for j, m in enumerate(group):
                truth = j != intruder
                rows.append(Row(m.id, m.window.stratum, truth, None if pick is None else j != pick))
        extra = {"group_accuracy": float(np.mean(found))} if found else {}
        return Details(component_key=item.key, latent=item.latent, scorer=self.name, label=item.label, rows=rows,
                       n_failed=sum(r.prediction is None for r in rows), errors=dict(errors), extra=extra)
