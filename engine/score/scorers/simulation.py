"""Simulation: predict the latent's activation on every token from the explanation alone.

For up to `n_simulated` held-out activating windows (stratified) and as many
non-activating ones, the judge returns one integer 0-10 per token
({"activations": [...]}); the schema fixes the list's length to the excerpt's
token count and every item to 0..10 (`simulation_schema`). When the endpoint gives
logprobs, each prediction is instead the expected value sum(v p(v)) over the
alternatives of its number token that are integers 0..10 (renormalised), as in
OpenAI's simulator. Numbers need not be single tokens: where a tokenizer splits
"10" into "1" "0" (SmolLM2, every digit-splitting tokenizer), the "1" alternative
is split between 1 and 10 by the next token's alternatives, P(10) = p("1") q("0")
and P(1) = p("1") q(end), q renormalised over "0" and non-digit tokens. That next
token is conditioned on a generated "1", so when another digit was generated the
"1" alternative counts as 1 (exact whenever "1" or "10" was generated). If the
number tokens cannot be lined up with the excerpt's tokens, the JSON integers are
used. The generated token is read as the first (most likely) alternative, which it
is at temperature 0.

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
from engine.score.scorers.judge import decode_json, exact_items

THRESHOLD = 0.5
"Predicted level above which a window counts as predicted-activating."


class SimulatedActivations(msgspec.Struct, forbid_unknown_fields=True):
    activations: list[int]
    "One integer 0-10 per token, in token order."


SCHEMA = provider_schema(SimulatedActivations)


LEVELS = list(range(11))
"The simulator's scale."


def simulation_schema(n: int) -> dict:
    """SCHEMA with exactly n activations, each one of 0..10."""
    return exact_items(SCHEMA, "activations", n, LEVELS)


def expected_values(logprobs: list[list[tuple[str, float]]] | None) -> list[float]:
    """Expected 0..10 value of every generated number (one token, or "1" "0"), in order."""
    out = []
    steps = logprobs or []
    i = 0
    while i < len(steps):
        alternatives = steps[i]
        first = _level(alternatives[0][0]) if alternatives else ()
        if not first:
            i += 1
            continue
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        split_ten = first[0] == 1 and nxt is not None and _continues_ten(nxt)
        one = _one_or_ten(nxt) if first[0] == 1 and nxt else 1.0  # value of the "1" branch
        num = den = 0.0
        for tok, lp in alternatives:
            v = _level(tok)
            if v:
                p = math.exp(min(lp, 0.0))  # a logprob is <= 0; a larger one is garbage, not an overflow
                num += (one if v[0] == 1 else v[0]) * p
                den += p
        fallback = 10.0 if split_ten else float(first[0])
        out.append(num / den if den > 0 else fallback)  # all underflowed (vLLM: -9999)
        i += 2 if split_ten else 1
    return out


def _continues_ten(alternatives: list[tuple[str, float]]) -> bool:
    """Whether the token generated after a "1" is the "0" of "10"."""
    return bool(alternatives) and alternatives[0][0].strip()[:1] == "0" and not alternatives[0][0].strip()[1:2].isdigit()


def _one_or_ten(alternatives: list[tuple[str, float]]) -> float:
    """Expected value of a number that starts "1", from the alternatives of the token after it."""
    q0 = q_end = 0.0
    for tok, lp in alternatives:
        t = tok.strip()
        p = math.exp(min(lp, 0.0))
        if t[:1] == "0" and not t[1:2].isdigit():
            q0 += p
        elif not t[:1].isdigit():
            q_end += p
    return (10.0 * q0 + q_end) / (q0 + q_end) if q0 + q_end > 0 else 1.0


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
        return [LLMCall(render("simulation", explanation=item.label, tokens=w.tokens), simulation_schema(len(w.tokens)),
                        "simulation",
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
