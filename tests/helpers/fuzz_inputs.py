"""What the fuzz tests (tests/reliability/test_reliability_fuzz_*.py) feed the readers, and how they check them.

Hypothesis strategies for arbitrary JSON, for values shaped like a template with
parts left out or replaced, and for LLM reply texts (bare, fenced, torn, nested
past the decoder's limit); the shared settings (FUZZ_EXAMPLES=2000 searches longer);
a search-labelled trigger run whose first latent's ScoreItem the judge replies are
fuzzed against; and the round-trip check every accepted record must pass.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from clients.structured import provider_schema
from engine.core.rundir import RunDir, primary
from engine.core.schemas import ExplanationOutput
from engine.interpret.config import InterpretConfig
from engine.interpret.run import run_interpret
from engine.score.items import score_item
from engine.score.scorers.base import ScoreConfig
from tests.helpers.trigger_run import pool_source, write_run

N_EXAMPLES = os.environ.get("FUZZ_EXAMPLES")
"Unset: 60 fixed examples per test (CI). FUZZ_EXAMPLES=2000: that many fresh random ones, to search longer."
FUZZ = settings(max_examples=int(N_EXAMPLES or 60), derandomize=N_EXAMPLES is None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DEEP = "[" * 3000 + "]" * 3000
"Nesting past msgspec's recursion limit: a degenerate model can emit it."
EXPLANATION_SCHEMA = provider_schema(ExplanationOutput)

json_scalar = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_value = st.recursive(
    json_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
logprob = st.floats(allow_nan=False, allow_infinity=False)  # JSON carries no NaN or infinity
digitish = st.sampled_from(["0", "1", " 1", "10", "3", "11", "007", "²", "٣", "x", "{", "", " "]) | st.text(max_size=3)
"Tokens a judge's logprobs list: digits, numbers past 10, digits int() refuses, anything."
logprobs = st.none() | st.lists(st.lists(st.tuples(digitish, logprob), max_size=4), max_size=12)


def shaped(template):
    """Values shaped like `template` (dicts/lists of strategies), where any part may be left out or be any JSON."""
    if isinstance(template, dict):
        inner = st.fixed_dictionaries({}, optional={k: shaped(v) for k, v in template.items()})
    elif isinstance(template, list):
        inner = st.lists(shaped(template[0]), max_size=4)
    else:
        inner = template
    return st.integers(0, 7).flatmap(lambda i: json_value if i == 0 else inner)


@st.composite
def reply_text(draw, obj):
    """A reply carrying `obj` as JSON, bare, fenced, in a sentence, torn, or plain text."""
    body = json.dumps(draw(obj))
    form = draw(st.sampled_from(["bare", "fenced", "sentence", "torn", "text", "deep"]))
    if form == "fenced":
        return f"```json\n{body}\n```"
    if form == "sentence":
        return f"{draw(st.text(max_size=10))} {body} {draw(st.text(max_size=10))}"
    if form == "torn":
        return body[: draw(st.integers(0, len(body)))]
    if form == "text":
        return draw(st.text(max_size=60))
    if form == "deep":
        return DEEP
    return body


explanation_obj = shaped({"reasoning": st.text(max_size=20), "label": st.text(max_size=20),
                          "confidence": st.sampled_from(["low", "medium", "high", "sure"])})


def roundtrip(record, type_):
    """`record`, written as a log line, reads back equal (a NaN or infinity would come back as null)."""
    back = msgspec.json.decode(msgspec.json.encode(record), type=type_)
    assert back == record, "a written record reads back different"


def not_utf8(raw: bytes) -> bytes:
    """`raw` with a byte that is not UTF-8 at the start of its first string value."""
    return re.sub(rb'":\s*"', b'":"\x80', raw, count=1)


def labelled_item(root: Path, n_latents: int = 2, n_sequences: int = 40):
    """A small trigger run with search labels, its negatives (a replayed pool), and one latent's ScoreItem
    (held-out windows and verified negatives)."""
    run = write_run(root, n_latents=n_latents, n_sequences=n_sequences)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    negatives = pool_source(run, n_sequences=n_sequences)
    c = next(RunDir(run.dir).iter_components())
    e = primary(RunDir(run.dir).read_explanations()[c.latent])
    return run, negatives, score_item(c, e, negatives, ScoreConfig(n_boot=20), run.window)


def reply_sizes(scorer, item) -> list[int]:
    """Answers each of the scorer's requests expects."""
    if scorer.name == "simulation":
        return [len(w.tokens) for w in scorer.windows(item)]
    if scorer.name == "intruder":
        return [len(g) for g, _ in scorer.groups(item)]
    return [len(b) for b in scorer.batches(item)]
