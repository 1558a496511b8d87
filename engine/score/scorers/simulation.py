"""Simulation: predict the latent's activation on every token from the explanation alone.

For up to `n_simulated` held-out activating windows (stratified) and as many
non-activating ones, the judge returns one integer 0-10 per token
({"activations": [...]}). When the endpoint gives logprobs, each prediction is
instead the expected value sum(v p(v)) over the alternatives of its number
token that are integers 0..10 (renormalised), as in OpenAI's simulator; if the
number tokens cannot be lined up with the excerpt's tokens, the JSON integers
are used.

Metrics: `extra["pearson"]` is the Pearson r between the true activations
(0-10 scale: 10 * a / latent max) and the predictions over every token of every
simulated window of the latent, pooled (not a mean of per-window r). Rows are
per window: prediction = max predicted value >= 0.5 (the simulator expects a
firing somewhere), probability = that max / 10, which gives the AUC.
"""

from __future__ import annotations

import math
from collections import Counter

import msgspec
import numpy as np

from clients.structured import provider_schema
from engine.interpret.prompts import render
from engine.score.metrics import pearson
from engine.score.scorers.base import Details, LLMCall, Row, ScoreConfig, ScoreItem, SimWindow, stratified
from engine.score.scorers.judge import decode_json

THRESHOLD = 0.5
"Predicted level above which a window counts as predicted-activating."


class SimulatedActivations(msgspec.Struct, forbid_unknown_fields=True):
    activations: list[int]
    "One integer 0-10 per token, in token order."


SCHEMA = provider_schema(SimulatedActivations)


def expected_values(logprobs: list[list[tuple[str, float]]] | None) -> list[float]:
    """Expected 0..10 value of every generated token that is an integer 0..10, in order."""
    out = []
    for alternatives in logprobs or []:
        if not alternatives or not _level(alternatives[0][0]):
            continue
        num = den = 0.0
        for tok, lp in alternatives:
            v = _level(tok)
            if v:
                p = math.exp(min(lp, 0.0))  # a logprob is <= 0; a larger one is garbage, not an overflow
                num += v[0] * p
                den += p
        out.append(num / den if den > 0 else float(_level(alternatives[0][0])[0]))  # all underflowed (vLLM: -9999)
    return out


def _level(token: str) -> tuple[int] | tuple[()]:
    t = token.strip()
    return (int(t),) if t.isascii() and t.isdigit() and int(t) <= 10 else ()  # "²".isdigit() too, but int() fails


def read_simulation(response, n: int) -> tuple[list[float] | None, str | None]:
    if response is None:
        return None, "missing"
    if response.error:
        return None, response.error
    parsed = decode_json(response.text, response.parsed, SimulatedActivations)
    if parsed is None:
        return None, "invalid_json"
    if len(parsed.activations) != n:
        return None, "wrong_length"
    ev = expected_values(response.logprobs)
    if len(ev) == n:
        return ev, None
    return [float(min(10, max(0, v))) for v in parsed.activations], None


class Simulation:
    name = "simulation"
    llm = True

    def __init__(self, cfg: ScoreConfig):
        self.cfg = cfg

    def windows(self, item: ScoreItem):
        rng = item.rng(self.name)
        pos = stratified(item.activating, self.cfg.n_simulated, rng)
        return pos + item.negatives[: len(pos)]

    def calls(self, item: ScoreItem):
        return [LLMCall(render("simulation", explanation=item.label, tokens=w.tokens), SCHEMA, "simulation",
                        max(self.cfg.max_tokens, 8 * len(w.tokens) + 64), self.cfg.logprobs)
                for w in self.windows(item)]

    def outcome(self, item: ScoreItem, responses: list) -> Details:
        rows, sims, errors = [], [], Counter()
        for w, response in zip(self.windows(item), responses):
            pred, err = read_simulation(response, len(w.tokens))
            if err:
                errors[err] += 1
            true = [min(10.0, 10.0 * max(a, 0.0) / item.max_act) if item.max_act > 0 else 0.0 for a in w.activations]
            sims.append(SimWindow(w.id, w.stratum, true, pred))
            top = max(pred) if pred else None
            rows.append(Row(w.id, w.stratum, w.activating, None if pred is None else top >= THRESHOLD,
                            None if pred is None else top / 10.0))
        extra = {}
        ok = [s for s in sims if s.predicted is not None]
        if ok:
            r = pearson(np.concatenate([s.true for s in ok]), np.concatenate([s.predicted for s in ok]))
            if np.isfinite(r):
                extra["pearson"] = r
        return Details(component_key=item.key, latent=item.latent, scorer=self.name, label=item.label, rows=rows,
                       n_failed=sum(r.prediction is None for r in rows), errors=dict(errors), extra=extra,
                       windows=sims)
