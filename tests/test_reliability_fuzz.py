"""Fuzzing every reader of LLM output and of result files: nothing raises but a classified failure.

LLM replies (explanations, judge answers, logprobs, whole HTTP bodies of both wire
formats) are either used or turned into an error code the engine defines; result
files (append-only logs, score logs and their summaries, harvest/components.jsonl,
config.json) are either read or refused with a one-line UserError naming the file.
Inputs are arbitrary text/bytes/JSON and, more often, valid data with parts torn,
replaced or left out. Whatever a reader accepts must survive being written and
read back (a NaN or infinity would be written as null and make a log unreadable).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from email.utils import format_datetime

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clients.anthropic import AnthropicWire
from clients.anthropic_batches import BatchRecord, BatchState, load_state
from clients.backoff import retry_after_s
from clients.base import ERROR_CODES, CompletionRequest, CompletionResponse
from clients.config import Prices
from clients.openai_compat import OpenAIWire
from clients.structured import decode_output, schema_errors
from clients.verdict import Verdict, http_verdict
from engine.errors import UserError
from engine.exports import latest_scores, write_exports
from engine.interpret import (
    InterpretConfig, Pending, iter_components, llm_explanation, load_run_config, parse_explanation, primary,
    read_explanations, run_interpret,
)
from engine.negatives import NegativePool
from engine.report_data import Annotations, RunData
from engine.resultsio import JsonlAppender, read_records, repair_tail
from engine.schemas import Explanation, ExplanationOutput, ScoreResult, Usage, provider_schema
from engine.score import score_item, summarize, to_result
from engine.scorers import Details, ScoreConfig, registry
from engine.scorers.intruder import SCHEMA as INTRUDER_SCHEMA
from engine.scorers.judge import BINARY_SCHEMA, digit_probabilities
from engine.scorers.simulation import SCHEMA as SIMULATION_SCHEMA
from engine.scorers.simulation import expected_values
from tests.interp_fixtures import pool_source, write_run

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # DEEP in a failing example
N_EXAMPLES = os.environ.get("FUZZ_EXAMPLES")
"Unset: 60 fixed examples per test (CI). FUZZ_EXAMPLES=2000: that many fresh random ones, to search longer."
FUZZ = settings(max_examples=int(N_EXAMPLES or 60), derandomize=N_EXAMPLES is None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DEEP = "[" * 3000 + "]" * 3000
"Nesting past msgspec's recursion limit: a degenerate model can emit it."
SCORER_ERRORS = set(ERROR_CODES) | {"missing", "invalid_json", "wrong_length", "out_of_range"}
HTTP_CODE = re.compile(r"http_[1-5]\d\d")
"Statuses outside ERROR_CODES keep their number (http_405, http_418, ...)."
EXPLANATION_SCHEMA = provider_schema(ExplanationOutput)

# ---------------------------------------------------------------------------- strategies

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


def roundtrip(record, type_):
    """`record`, written as a log line, reads back equal (a NaN or infinity would come back as null)."""
    back = msgspec.json.decode(msgspec.json.encode(record), type=type_)
    assert back == record, "a written record reads back different"


# ---------------------------------------------------------------------------- LLM output


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
    e = llm_explanation(Pending(3, "h/3", "search label", ["1:2"], "hash"), InterpretConfig(model="m"), reply)
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
def synthetic(tmp_path_factory):
    """A small synthetic run with search labels, and its negatives (a replayed pool)."""
    run = write_run(tmp_path_factory.mktemp("fuzz") / "run", n_latents=2, n_sequences=40)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    return run, pool_source(run, n_sequences=40)


@pytest.fixture(scope="module")
def item(synthetic):
    """One latent's ScoreItem (held-out windows and verified negatives)."""
    run, negatives = synthetic
    c = next(iter_components(run.dir))
    e = primary(read_explanations(run.dir)[c.latent])
    return score_item(c, e, negatives, ScoreConfig(n_boot=20), run.window)


def reply_sizes(scorer, item) -> list[int]:
    """Answers each of the scorer's requests expects."""
    if scorer.name == "simulation":
        return [len(w.tokens) for w in scorer.windows(item)]
    if scorer.name == "intruder":
        return [len(g) for g, _ in scorer.groups(item)]
    return [len(b) for b in scorer.batches(item)]


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
    assert (result.error is None) == any(r.prediction is not None for r in d.rows)
    roundtrip(result, ScoreResult)


# ---------------------------------------------------------------------------- HTTP bodies of both wires

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


def not_utf8(raw: bytes) -> bytes:
    """`raw` with a byte that is not UTF-8 at the start of its first string value."""
    return re.sub(rb'":\s*"', b'":"\x80', raw, count=1)


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


# ---------------------------------------------------------------------------- result files


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, item):
    """A synthetic run with explanations and detection/simulation scores, and valid lines of every log."""
    run = write_run(tmp_path_factory.mktemp("files") / "run", n_latents=3, n_sequences=40)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    scorers = registry(ScoreConfig(n_boot=20))
    answers = {"detection": lambda n: {"answers": [1] * n}, "simulation": lambda n: {"activations": [5] * n}}
    lines: dict[str, list[bytes]] = {"Explanation": [], "ScoreResult": [], "Details": [], "ComponentData": []}
    enc = msgspec.json.Encoder()
    for name, answer in answers.items():
        s = scorers[name]
        replies = [CompletionResponse(custom_id="x", text=json.dumps(answer(n)), parsed=None, stop_reason="end",
                                      usage=Usage(), model="m") for n in reply_sizes(s, item)]
        d = s.outcome(item, replies)
        with JsonlAppender(run.dir / "scores" / "details" / f"{name}.jsonl", Details) as det, \
                JsonlAppender(run.dir / "scores" / f"{name}.jsonl", ScoreResult) as res:
            for latent in range(run.n_latents):
                d_l = msgspec.structs.replace(d, latent=latent, component_key=f"h/{latent}")
                det.append(d_l)
                res.append(to_result(d_l, "m", Usage(), n_boot=20))
        lines["Details"].append(enc.encode(d) + b"\n")
        lines["ScoreResult"].append(enc.encode(to_result(d, "m", Usage(), n_boot=20)) + b"\n")
    for key, path in (("Explanation", "interpretations/results.jsonl"), ("ComponentData", "harvest/components.jsonl")):
        lines[key] = (run.dir / path).read_bytes().splitlines(keepends=True)
    return run, lines


@st.composite
def log_bytes(draw, valid: list[bytes]):
    """A log file: valid lines, torn lines, lines with a field replaced or removed, a string that is not
    UTF-8, nesting past the decoder's limit, junk bytes, blank lines."""
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 11))
        line = draw(st.sampled_from(valid))
        if kind <= 3:
            pieces.append(line)
        elif kind == 4:
            pieces.append(line[: draw(st.integers(0, len(line)))])
        elif kind in (5, 6):
            obj = json.loads(line)
            key = draw(st.sampled_from(sorted(obj))) if isinstance(obj, dict) and obj else None
            if key is not None and draw(st.booleans()):
                obj.pop(key)
            elif key is not None:
                obj[key] = draw(json_value)
            pieces.append(json.dumps(obj).encode() + b"\n")
        elif kind == 7:
            pieces.append(draw(st.binary(max_size=24)))
        elif kind == 8:
            pieces.append(re.sub(rb'":\s*"', b'":"\x80', line, count=1))
        elif kind == 9:
            pieces.append(b'{"latent": 1, "x": ' + DEEP.encode() + b"}\n")
        else:
            pieces.append(draw(st.sampled_from([b"\n", b"  \n", b"\r\n", b"{}\n", b"null\n", b"\xff\xfe\n", b"[]"])))
    return b"".join(pieces)


def read_or_refuse(fn, path):
    """fn()'s value, or the UserError it raised, which must name `path` on one line."""
    try:
        return fn()
    except UserError as e:
        msg = str(e)
        assert str(path) in msg and "\n" not in msg, msg
        return UserError


@FUZZ
@given(data=st.data(), type_name=st.sampled_from(["Explanation", "ScoreResult", "Details"]))
def test_append_only_logs_read_repair_and_append(scored_run, tmp_path_factory, data, type_name):
    _, lines = scored_run
    type_ = {"Explanation": Explanation, "ScoreResult": ScoreResult, "Details": Details}[type_name]
    content = data.draw(log_bytes(lines[type_name]))
    path = tmp_path_factory.mktemp("log") / "log.jsonl"
    path.write_bytes(content)
    before = read_or_refuse(lambda: read_records(path, type_), path)
    repair_tail(path, type_)
    after = path.read_bytes()
    assert after == b"" or after.endswith(b"\n")
    assert read_or_refuse(lambda: read_records(path, type_), path) == before  # repair drops only what no reader used
    new = msgspec.json.decode(lines[type_name][0], type=type_)
    path.write_bytes(content)

    def append():
        with JsonlAppender(path, type_) as log:
            log.append(new)
        return read_records(path, type_)

    got = read_or_refuse(append, path)
    assert got is UserError if before is UserError else got == [*before, new]


@FUZZ
@given(data=st.data())
def test_score_logs_summaries_exports_and_report_read_or_refuse(scored_run, tmp_path_factory, data):
    run, lines = scored_run
    d = tmp_path_factory.mktemp("scores") / "run"
    shutil.copytree(run.dir, d)
    for name in ("detection", "simulation"):
        if data.draw(st.booleans()):
            (d / "scores" / f"{name}.jsonl").write_bytes(data.draw(log_bytes(lines["ScoreResult"])))
        if data.draw(st.booleans()):
            (d / "scores" / "details" / f"{name}.jsonl").write_bytes(data.draw(log_bytes(lines["Details"])))
    if data.draw(st.booleans()):
        (d / "interpretations" / "results.jsonl").write_bytes(data.draw(log_bytes(lines["Explanation"])))
    for fn in (lambda: summarize(d, ["detection", "simulation"], None, n_boot=10), lambda: latest_scores(d),
               lambda: write_exports(d), lambda: Annotations(d).refresh()):
        read_or_refuse(fn, d)


@FUZZ
@given(data=st.data())
def test_components_and_config_read_or_refuse(scored_run, tmp_path_factory, data):
    run, lines = scored_run
    d = tmp_path_factory.mktemp("components") / "run"
    shutil.copytree(run.dir, d)
    components = data.draw(log_bytes(lines["ComponentData"]))
    (d / "harvest" / "components.jsonl").write_bytes(components)
    if data.draw(st.integers(0, 3)) == 0:
        config = (d / "harvest" / "config.json").read_bytes()
        (d / "harvest" / "config.json").write_bytes(data.draw(log_bytes([config + b"\n"])))
    read_or_refuse(lambda: load_run_config(d), d)
    read_or_refuse(lambda: list(iter_components(d)), d)

    def report():
        r = RunData(d)
        return [r.decode_component(line, off) for off, line in r.scan()]

    read_or_refuse(report, d)
    state = msgspec.json.encode(BatchState(batches=[BatchRecord(id="msgbatch_1", custom_ids=["a-1"], created_at=1.0)]))
    (d / "interpretations" / "batches.json").write_bytes(data.draw(log_bytes([state])))
    read_or_refuse(lambda: load_state(d / "interpretations" / "batches.json"), d)


@FUZZ
@given(data=st.data())
def test_damaged_negative_pool_cache_is_rebuilt_not_raised(synthetic, tmp_path_factory, data):
    pool, meta = synthetic[1].pool, {"settings": 1}
    path = tmp_path_factory.mktemp("pool") / "pool.npz"
    pool.save(path, meta)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["cut", "byte", "insert"]))
        if op == "cut":
            raw = raw[:at]
        elif op == "byte":
            raw[at] = data.draw(st.integers(0, 255))
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        if not raw:
            break
    path.write_bytes(bytes(raw))
    got = NegativePool.load(path, meta, pool.vocab, pool.seed)  # None: score builds the pool again
    if got is not None:  # zip CRCs: what loads is the pool that was saved
        assert (got.token_ids == pool.token_ids).all() and (got.fires == pool.fires).all()


@FUZZ
@given(headers=headers)
@example(headers={"retry-after": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"})
def test_retry_after_is_none_or_a_wait(headers):
    wait = retry_after_s(headers)
    assert wait is None or wait >= 0.0
