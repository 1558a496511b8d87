"""Asking an LLM judge about a few excerpts at a time, and reading its answers.

`binary_calls` cuts examples into prompts of `per_prompt`; `read_binary` turns
each reply into one 0/1 answer per excerpt, or marks the whole prompt failed
(a missing reply, invalid JSON, or a list of the wrong length are never guessed
at). The schema sent with each request (`binary_schema(n)`) fixes the list's length
to the number of excerpts, so a grammar-constrained server cannot answer `[]`.
With logprobs, each answer also gets P(1) = p("1") / (p("0") + p("1")),
read from the alternatives of the k-th generated "0"/"1" token.
"""

from __future__ import annotations

import json
import math
from typing import Literal

import msgspec

from clients.structured import provider_schema
from engine.interpret.prompts import render
from engine.score.scorers.base import LLMCall, ScoreConfig


class BinaryAnswers(msgspec.Struct, forbid_unknown_fields=True):
    answers: list[Literal[0, 1]]
    "One 0/1 per excerpt, in order."


BINARY_SCHEMA = provider_schema(BinaryAnswers)


def exact_items(schema: dict, field: str, n: int, values: list | None = None) -> dict:
    """A copy of `schema` whose array `field` must hold exactly n items (of `values`, when given)."""
    prop = {**schema["properties"][field], "minItems": n, "maxItems": n}
    if values is not None:
        prop["items"] = {"enum": values}
    return {**schema, "properties": {**schema["properties"], field: prop}}


def binary_schema(n: int) -> dict:
    """BINARY_SCHEMA with `answers` of exactly n items."""
    return exact_items(BINARY_SCHEMA, "answers", n)


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def binary_calls(task: str, label: str, batches: list[list], cfg: ScoreConfig) -> list[LLMCall]:
    """One judge request per batch of examples (each example as the template expects it)."""
    return [LLMCall(render(task, explanation=label, examples=b), binary_schema(len(b)), "answers", cfg.max_tokens,
                    cfg.logprobs) for b in batches]


def decode_json(text: str, parsed: dict | None, type_: type):
    """`type_` from the provider's parsed JSON, else from the outermost {...} of the text; None if neither fits.

    The text is read strictly, then as `json.loads(strict=False)` reads it: a grammar may let raw
    control characters (newlines, tabs) into strings, which strict JSON forbids."""
    raws = [msgspec.json.encode(parsed)] if parsed is not None else []
    lo, hi = text.find("{"), text.rfind("}")
    if 0 <= lo < hi:
        raws.append(text[lo : hi + 1].encode())
    for raw in raws:
        try:
            return msgspec.json.decode(raw, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        try:
            return msgspec.convert(json.loads(raw, strict=False), type=type_)
        except (ValueError, RecursionError, msgspec.ValidationError):  # JSONDecodeError and UnicodeDecodeError too
            continue
    return None


def digit_probabilities(logprobs: list[list[tuple[str, float]]] | None, digits: tuple[str, str] = ("0", "1")) -> list[float | None]:
    """P(second digit) among the two, for every generated token that is one of them, in order."""
    if not logprobs:
        return []
    out: list[float | None] = []
    for alternatives in logprobs:
        if not alternatives or alternatives[0][0].strip() not in digits:
            continue
        p = {d: 0.0 for d in digits}
        for tok, lp in alternatives:
            t = tok.strip()
            if t in p:
                p[t] += math.exp(min(lp, 0.0))  # a logprob is <= 0; a larger one is garbage, not an overflow
        total = p[digits[0]] + p[digits[1]]
        out.append(p[digits[1]] / total if total > 0 else None)
    return out


def read_binary(response, n: int) -> tuple[list[bool] | None, list[float | None], str | None]:
    """(answers or None, probabilities, error code) for a reply about n excerpts."""
    if response is None:
        return None, [None] * n, "missing"
    if response.error:
        return None, [None] * n, response.error
    parsed = decode_json(response.text, response.parsed, BinaryAnswers)
    if parsed is None:
        return None, [None] * n, "invalid_json"
    if len(parsed.answers) != n:
        return None, [None] * n, "wrong_length"
    probs = digit_probabilities(response.logprobs)
    if len(probs) != n:
        probs = [None] * n
    return [bool(a) for a in parsed.answers], probs, None
