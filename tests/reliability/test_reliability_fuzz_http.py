"""Fuzzing the readers of HTTP replies of both wire formats: nothing raises but a classified verdict.

Whole HTTP bodies (Anthropic and OpenAI/OpenRouter shapes with parts torn,
replaced or left out, bodies that are not UTF-8 or nest past the decoder's limit),
any status and retry headers become a Verdict whose error is a code the engine
defines; what a wire accepts must survive being written and read back.
"""

from __future__ import annotations

import json
import re
from email.utils import format_datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from clients.anthropic import AnthropicWire
from clients.backoff import retry_after_s
from clients.base import ERROR_CODES, CompletionRequest
from clients.config import Prices
from clients.openai_compat import OpenAIWire
from clients.structured import schema_errors
from clients.usage import Usage
from clients.verdict import Verdict, http_verdict
from tests.helpers.fuzz_inputs import (
    DEEP,
    EXPLANATION_SCHEMA,
    FUZZ,
    digitish,
    explanation_obj,
    json_value,
    logprob,
    not_utf8,
    reply_text,
    roundtrip,
    shaped,
)

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # DEEP in a failing example
HTTP_CODE = re.compile(r"http_[1-5]\d\d")
"Statuses outside ERROR_CODES keep their number (http_405, http_418, ...)."

integer = st.none() | st.integers()
anthropic_body = shaped({
    "content": [{"type": st.sampled_from(["text", "thinking", "tool_use"]), "text": reply_text(explanation_obj)}],
    "stop_reason": st.sampled_from(["end_turn", "max_tokens", "refusal", "model_context_window_exceeded", "odd"]),
    "model": st.text(max_size=8),
    "usage": {"input_tokens": integer, "output_tokens": integer, "cache_read_input_tokens": integer,
              "cache_creation_input_tokens": integer, "service_tier": st.sampled_from(["batch", "x"]),
              "cache_creation": {"ephemeral_5m_input_tokens": integer, "ephemeral_1h_input_tokens": integer}},
    "error": {"type": st.text(max_size=8), "message": st.sampled_from(["temperature", ""]) | st.text(max_size=20),
              "details": {"error_code": st.sampled_from(["enforced_spend_limit_reached", "x"])}},
    "request_id": st.text(max_size=8),
})
top_logprob = {"token": digitish, "logprob": logprob}
openai_body = shaped({
    "choices": [{"message": {"content": st.none() | reply_text(explanation_obj), "refusal": st.none() | st.text()},
                 "finish_reason": st.sampled_from(["stop", "length", "content_filter", "error", "odd"]),
                 "logprobs": {"content": [{**top_logprob, "top_logprobs": [top_logprob]}]},
                 "error": {"code": st.integers() | st.text(max_size=4), "message": st.text(max_size=10),
                           "metadata": {"error_type": st.sampled_from(["rate_limit_exceeded", "timeout", "x"])}}}],
    "usage": {"prompt_tokens": integer, "completion_tokens": integer, "cost": logprob,
              "prompt_tokens_details": {"cached_tokens": integer, "cache_write_tokens": integer}},
    "model": st.text(max_size=8),
    "error": {"message": st.text(max_size=10), "metadata": {"limit_source": st.just("openrouter_in_flight_budget"),
                                                            "error_type": st.sampled_from(["server", "x"])}},
    "prompt_logprobs": [st.none() | st.dictionaries(st.text(max_size=3), shaped(
        {"logprob": logprob, "rank": integer, "decoded_token": st.text(max_size=3)}), max_size=3)],
    "message": st.text(max_size=10), "detail": json_value,
})
HUGE_YEAR = "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"
http_date = st.datetimes().map(lambda d: format_datetime(d) + " GMT") | st.just(HUGE_YEAR)
headers = st.fixed_dictionaries({}, optional={
    "retry-after": st.text(max_size=12) | st.floats(allow_nan=False).map(str) | http_date,
    "retry-after-ms": st.text(max_size=6) | st.integers().map(str), "request-id": st.text(max_size=8),
    "x-request-id": st.text(max_size=8), "x-generation-id": st.text(max_size=8)})
statuses = st.sampled_from([200, 200, 200, 400, 401, 402, 403, 404, 408, 409, 413, 429, 500, 503, 529])

@FUZZ
@given(wire_kind=st.sampled_from(["anthropic", "openai", "openrouter"]), data=st.data(),
       status=statuses | st.integers(100, 599), headers=headers, logprobs_wanted=st.integers(0, 2))
def test_http_replies_become_verdicts(wire_kind, data, status, headers, logprobs_wanted):
    if wire_kind == "anthropic":
        wire = AnthropicWire("claude-haiku-4-5", "http://127.0.0.1:9", None, Prices())
        logprobs_wanted = 0
    else:
        model = "anthropic/claude-haiku-4-5" if wire_kind == "openrouter" else "local"
        wire = OpenAIWire(model, "http://127.0.0.1:9/v1", None, Prices(), openrouter=wire_kind == "openrouter")
    body = (anthropic_body if wire_kind == "anthropic" else openai_body).map(lambda b: json.dumps(b).encode())
    raw = data.draw(st.binary(max_size=64) | body | body.map(not_utf8))
    request = CompletionRequest(custom_id="x", prompt="p", schema=EXPLANATION_SCHEMA, logprobs=logprobs_wanted)
    v = wire.interpret(request, status, headers, raw)
    assert isinstance(v, Verdict) and v.kind in ("done", "retry", "fail", "fatal", "resend")
    assert v.error is None or v.error in ERROR_CODES or HTTP_CODE.fullmatch(v.error), v.error
    assert v.retry_after is None or v.retry_after >= 0.0
    if v.kind == "done":
        r = v.response
        assert r.error is None or r.error in ERROR_CODES, r.error
        if r.parsed is not None:
            assert schema_errors(r.parsed, EXPLANATION_SCHEMA) == []
        roundtrip(r.usage, Usage)
    else:
        assert v.error is not None
    if status != 200:
        hv = http_verdict(status, retry_after_s(headers), "detail", "")
        assert hv.error in ERROR_CODES or HTTP_CODE.fullmatch(hv.error), hv.error


@pytest.mark.parametrize("wire_kind", ["anthropic", "openai"])
def test_deep_nesting_and_non_utf8_bodies_are_classified(wire_kind):
    """A degenerate model's "[[[[..." reply, a body nesting past the decoder's limit, and a body whose strings
    are not UTF-8 (a server splitting a multi-byte character) are classified, not raised."""
    request = CompletionRequest(custom_id="x", prompt="p", schema=EXPLANATION_SCHEMA)
    if wire_kind == "anthropic":
        wire = AnthropicWire("claude-haiku-4-5", "http://127.0.0.1:9", None, Prices())
        reply = {"content": [{"type": "text", "text": DEEP}], "stop_reason": "end_turn"}
    else:
        wire = OpenAIWire("local", "http://127.0.0.1:9/v1", None, Prices())
        reply = {"choices": [{"message": {"content": DEEP}, "finish_reason": "stop"}]}
    v = wire.interpret(request, 200, {}, json.dumps(reply).encode())
    assert v.kind == "done" and v.response.error == "invalid_json"
    deep = b'{"error": {"details": ' + DEEP.encode() + b', "metadata": 1}, "x": 2}'  # in fields kept as any JSON
    for status, raw in [(200, deep), (500, deep), (200, not_utf8(json.dumps(reply).encode()))]:
        v = wire.interpret(request, status, {}, raw)
        assert v.kind in ("retry", "fail") and v.error in ERROR_CODES, v


@FUZZ
@given(headers=headers)
@example(headers={"retry-after": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"})
def test_retry_after_is_none_or_a_wait(headers):
    wait = retry_after_s(headers)
    assert wait is None or wait >= 0.0
