"""Fuzzing every reader of LLM output: nothing raises but a classified failure.

LLM replies (explanations, structured output of every schema, judge answers and
their logprobs) are either used or turned into an error code the engine defines.
Inputs are arbitrary text/JSON and, more often, valid replies with parts torn,
replaced or left out (strategies in tests/helpers/fuzz_inputs.py). Whatever a
reader accepts must survive being written and read back.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from clients.base import ERROR_CODES, CompletionResponse
from clients.structured import decode_output, schema_errors
from clients.usage import Usage
from engine.core.schemas import Explanation, ScoreResult
from engine.interpret.explain import Pending, llm_explanation, parse_explanation
from engine.score.items import to_result
from engine.score.scorers import registry
from engine.score.scorers.base import Details, ScoreConfig
from engine.score.scorers.intruder import SCHEMA as INTRUDER_SCHEMA
from engine.score.scorers.judge import BINARY_SCHEMA, digit_probabilities
from engine.score.scorers.simulation import SCHEMA as SIMULATION_SCHEMA
from engine.score.scorers.simulation import expected_values
from tests.helpers.fuzz_inputs import (
    DEEP,
    EXPLANATION_SCHEMA,
    FUZZ,
    explanation_obj,
    json_value,
    labelled_item,
    logprobs,
    reply_sizes,
    reply_text,
    roundtrip,
    shaped,
)

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # DEEP in a failing example
SCORER_ERRORS = set(ERROR_CODES) | {"missing", "invalid_json", "wrong_length", "out_of_range"}


def judge_obj(field: str, n: int):
    """The judge's answer object for a request about n excerpts or tokens, of the right length or not."""
    if field == "intruder":
        return shaped({field: st.integers(0, n + 1) | st.integers()})
    value = st.integers(0, 1) if field == "answers" else st.integers(-3, 13)
    value = value | st.integers()
    return shaped({field: st.lists(value, min_size=n, max_size=n) | st.lists(value, max_size=n + 2)})


@st.composite
def response(draw, obj):
    """A CompletionResponse as a client hands it over: a classified error, or text (+ parsed JSON, logprobs)."""
    if draw(st.integers(0, 9)) == 0:
        return None
    if draw(st.integers(0, 5)) == 0:
        return CompletionResponse(custom_id="x", text="", parsed=None, stop_reason="error", usage=Usage(), model="m",
                                  error=draw(st.sampled_from(sorted(ERROR_CODES))))
    text = draw(reply_text(obj))
    parsed = draw(st.none() | obj | json_value)
    return CompletionResponse(custom_id="x", text=text, parsed=parsed, stop_reason="end", usage=Usage(), model="m",
                              logprobs=draw(logprobs))


@FUZZ
@given(text=reply_text(explanation_obj), parsed=st.none() | explanation_obj | json_value)
@example(text=DEEP, parsed=None)
@example(text='{"reasoning": "r", "label": "  a \\n b ", "confidence": "low"}', parsed=None)
def test_explanation_replies_parse_or_get_an_error_code(text, parsed):
    out, err = parse_explanation(text, parsed)
    if out is None:
        assert err in {"empty_label", "invalid_json", "empty_response"}
    else:
        assert err is None and out.label and out.label == " ".join(out.label.split())
    reply = CompletionResponse(custom_id="x", text=text, parsed=parsed, stop_reason="end", usage=Usage(), model="m")
    e = llm_explanation(Pending(3, "h/3", "search label", ["1:2"], "hash"), "m", "default", reply)
    assert e.label and (e.error is None) == (out is not None)
    roundtrip(e, Explanation)


@FUZZ
@given(text=st.one_of(st.text(max_size=80), reply_text(json_value), reply_text(explanation_obj)),
       schema=st.sampled_from([EXPLANATION_SCHEMA, BINARY_SCHEMA, SIMULATION_SCHEMA, INTRUDER_SCHEMA]))
@example(text=DEEP, schema=EXPLANATION_SCHEMA)
@example(text="[" * 3000, schema=BINARY_SCHEMA)
def test_structured_output_decodes_or_is_classified(text, schema):
    value, err = decode_output(text, schema)
    assert err in (None, "invalid_json", "schema_mismatch")
    if err is None:
        assert schema_errors(value, schema) == []


@FUZZ
@given(lp=logprobs)
@example(lp=[[("3", -9999.0)], [("5", -9999.0), ("4", -1e4)]])  # vLLM reports -inf as -9999.0
@example(lp=[[("²", 0.0)], [("1", 800.0)]])
def test_logprob_readers_return_probabilities_and_levels(lp):
    for p in digit_probabilities(lp):
        assert p is None or 0.0 <= p <= 1.0
    for v in expected_values(lp):
        assert 0.0 <= v <= 10.0


@pytest.fixture(scope="module")
def item(tmp_path_factory):
    """One latent's ScoreItem (held-out windows and verified negatives) of a small search-labelled run."""
    return labelled_item(tmp_path_factory.mktemp("fuzz") / "run")[2]


@FUZZ
@given(data=st.data(), name=st.sampled_from(["detection", "fuzz", "simulation", "intruder"]))
def test_judge_replies_become_predictions_or_counted_failures(item, data, name):
    scorer = registry(ScoreConfig(n_boot=20))[name]
    field = {"detection": "answers", "fuzz": "answers", "simulation": "activations", "intruder": "intruder"}[name]
    replies = [data.draw(response(judge_obj(field, n))) for n in reply_sizes(scorer, item)]
    d = scorer.outcome(item, replies)
    assert set(d.errors) <= SCORER_ERRORS, d.errors
    assert d.n_failed == sum(r.prediction is None for r in d.rows)
    assert all(r.probability is None or 0.0 <= r.probability <= 1.0 for r in d.rows)
    roundtrip(d, Details)
    result = to_result(d, "m", Usage(), n_boot=20)
    judged = sum(r.prediction is not None for r in d.rows)  # a latent is final only when every excerpt was judged
    assert (result.error is None) == (judged == len(d.rows) > 0)
    assert (result.error == "incomplete") == (0 < judged < len(d.rows))
    assert (result.n_examples, result.n_planned) == (judged, len(d.rows))
    roundtrip(result, ScoreResult)
