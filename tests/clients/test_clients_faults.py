"""Fault scripts against the fake server, on both wire formats.

Every script ends with each request accounted for exactly once (a success or a
classified failure); retry counts are checked against the faults the server
actually served: sum(attempts) == requests the server saw, and the surplus
over one attempt per request == the retryable faults fired.
"""

import asyncio
import json
import logging
import time

import pytest

from clients import (
    CircuitPolicy,
    CompletionRequest,
    ModelPrice,
    Prices,
    RetryPolicy,
    Timeouts,
    make_client,
    run_requests,
)
from clients.base import ERROR_CODES
from clients.errors import ClientConfigError, ClientStopped
from clients.structured import provider_schema
from clients.testing import FakeLLMServer, Fault
from engine.core.schemas import ExplanationOutput

KEY = "sk-test-key-1234567890-SECRET"
WIRES = ["anthropic", "openai-compatible"]
FAST = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05, max_attempts=3)
SCHEMA = provider_schema(ExplanationOutput)


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def run(coro):
    return asyncio.run(coro)


def make(wire, server, **kw):
    kw.setdefault("retry", FAST)
    if wire == "anthropic":
        return make_client("anthropic", "claude-haiku-4-5", base_url=server.base_url, **kw)
    return make_client("openai-compatible", "local-model", base_url=server.base_url + "/v1", **kw)


def requests_(n, schema=SCHEMA):
    return [CompletionRequest(custom_id=f"score:h/{i}", prompt=f"latent #{i:03d}", system="rules", schema=schema)
            for i in range(n)]


async def run_script(wire, requests, server_kw=None, client_kw=None):
    async with FakeLLMServer(**(server_kw or {})) as server:
        client = make(wire, server, **(client_kw or {}))
        out = []
        summary = await run_requests(client, requests, out.append, progress=False, raise_on_stop=False)
        await client.aclose()
        return server, client, out, summary


def accounted(requests, out):
    ids = [r.custom_id for r in out]
    assert len(ids) == len(set(ids)), "a request was delivered twice"
    assert sorted(ids) == sorted(r.custom_id for r in requests), "a request was lost"
    assert all(r.error is None or r.error in ERROR_CODES for r in out)
    return {r.custom_id: r for r in out}


# ---------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("wire", WIRES)
def test_mixed_fault_script_accounts_for_every_request(wire):
    retryable = [Fault.http(429, retry_after=0.05, times=3), Fault.http(529, times=3), Fault.http(500, times=2),
                 Fault.http(504, times=2), Fault.of("drop", times=2), Fault.of("disconnect", times=2),
                 Fault.stall(0.5, times=1), Fault.stall(0.5, after_headers=True, times=1)]
    results = [Fault.http(400, match="#007"), Fault.of("refusal", match="#011"), Fault.of("max_tokens", match="#013"),
               Fault.of("truncate", match="#017")]
    reqs = requests_(60)
    server, client, out, summary = run(run_script(
        wire, reqs, {"faults": results + retryable},
        {"timeouts": Timeouts(read_s=0.15), "retry": RetryPolicy(base_delay_s=0.01, max_delay_s=0.05, max_attempts=6),
         "circuit": CircuitPolicy(min_attempts=1000)}))
    by_id = accounted(reqs, out)
    expected = {"score:h/7": "http_400", "score:h/11": "refusal", "score:h/13": "truncated",
                "score:h/17": "invalid_json"}
    assert {k: r.error for k, r in by_id.items() if r.error} == expected
    assert by_id["score:h/7"].attempts == 1 or any(f.used for f in retryable)  # 400 itself is never retried
    assert sum(r.attempts for r in out) == len(server.requests_seen)
    assert sum(r.attempts for r in out) - len(reqs) == sum(f.used for f in retryable) == 16
    assert summary.completed == 60 and summary.succeeded == 56 and summary.failures == {v: 1 for v in expected.values()}
    assert client.ledger.requests == 60


@pytest.mark.parametrize("wire", WIRES)
def test_retry_after_is_honoured(wire):
    t0 = time.monotonic()
    server, _, (resp,), _ = run(run_script(wire, requests_(1), {"faults": [Fault.http(429, retry_after=0.4)]}))
    assert resp.error is None and resp.attempts == 2 and time.monotonic() - t0 >= 0.4


@pytest.mark.parametrize("wire", WIRES)
def test_rate_limit_waits_do_not_use_up_attempts(wire):
    faults = [Fault.http(429, retry_after=0.01, times=5), Fault.http(500, times=2)]
    server, _, (resp,), _ = run(run_script(wire, requests_(1), {"faults": faults}))
    assert resp.error is None and resp.attempts == 8 and len(server.requests_seen) == 8  # max_attempts is 3
    server, _, (resp,), _ = run(run_script(wire, requests_(1), {"faults": [Fault.http(429, times=0)]}))
    assert resp.error == "rate_limited" and resp.attempts == 3  # without retry-after a 429 is a failure


@pytest.mark.parametrize("wire", WIRES)
def test_retry_after_beyond_cap_fails_without_waiting(wire):
    t0 = time.monotonic()
    policy = RetryPolicy(base_delay_s=0.01, retry_after_cap_s=5.0)
    _, _, (resp,), _ = run(run_script(wire, requests_(1), {"faults": [Fault.http(429, retry_after=120)]},
                                      {"retry": policy}))
    assert resp.error == "rate_limited" and resp.attempts == 1 and time.monotonic() - t0 < 2


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("status, code", [(429, "rate_limited"), (408, "timeout"), (500, "server_error"),
                                          (502, "server_error"), (503, "server_error"), (504, "server_error"),
                                          (529, "overloaded")])
def test_retryable_status_until_attempts_run_out(wire, status, code):
    server, _, (resp,), _ = run(run_script(wire, requests_(1), {"faults": [Fault.http(status, times=0)]}))
    assert resp.error == code and resp.attempts == 3 and len(server.requests_seen) == 3


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_errors_are_not_retried(wire, status):
    server, _, out, _ = run(run_script(wire, requests_(3), {"faults": [Fault.http(status, match="#001")]}))
    by_id = {r.custom_id: r for r in out}
    assert by_id["score:h/1"].error == f"http_{status}" and by_id["score:h/1"].attempts == 1
    assert by_id["score:h/0"].error is None and by_id["score:h/2"].error is None  # one bad item stops nothing
    assert len(server.requests_seen) == 3


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_stop_the_client(wire, status):
    reqs = requests_(10)
    server, client, out, summary = run(run_script(wire, reqs, {"faults": [Fault.http(status, times=0)]},
                                                  {"max_concurrent": 1}))
    accounted(reqs, out)
    assert summary.failures == {f"http_{status}": 10}
    assert len(server.requests_seen) == 1 and sum(r.attempts for r in out) == 1
    assert f"http_{status}" in client.stopped and f"scripted {status}" in client.stopped  # the server's message


def test_wrong_key_is_a_401_and_stops(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-wrong-key-000000")
    reqs = requests_(6)
    server, _, out, _ = run(run_script("anthropic", reqs, {"api_key": KEY}, {"max_concurrent": 1}))
    assert {r.error for r in out} == {"http_401"} and len(server.requests_seen) == 1


def test_spend_limit_429_is_not_retried_and_stops():
    reqs = requests_(5)
    server, _, out, _ = run(run_script("anthropic", reqs, {"faults": [Fault.of("spend_limit", times=0)]},
                                       {"max_concurrent": 1}))
    accounted(reqs, out)
    assert {r.error for r in out} == {"spend_limit"} and len(server.requests_seen) == 1


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("after_headers", [False, True])
def test_stalled_reply_times_out_then_retries(wire, after_headers):
    t0 = time.monotonic()
    faults = [Fault.stall(3.0, after_headers=after_headers)]
    _, _, (resp,), _ = run(run_script(wire, requests_(1), {"faults": faults}, {"timeouts": Timeouts(read_s=0.2)}))
    assert resp.error is None and resp.attempts == 2 and time.monotonic() - t0 < 2.5
    _, _, (resp,), _ = run(run_script(wire, requests_(1), {"faults": [Fault.stall(3.0, times=0)]},
                                      {"timeouts": Timeouts(read_s=0.1), "retry": RetryPolicy(max_attempts=1)}))
    assert resp.error == "timeout" and resp.attempts == 1


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("kind", ["drop", "disconnect"])
def test_dropped_connection_is_retried(wire, kind):
    server, _, (resp,), _ = run(run_script(wire, requests_(1), {"faults": [Fault.of(kind)]}))
    assert resp.error is None and resp.attempts == 2 and len(server.requests_seen) == 2
    _, _, (resp,), _ = run(run_script(wire, requests_(1), {"faults": [Fault.of(kind, times=0)]},
                                      {"retry": RetryPolicy(max_attempts=2, base_delay_s=0.01)}))
    assert resp.error == "connection" and resp.attempts == 2


def test_connection_refused_is_classified():
    async def go():
        client = make_client("openai-compatible", "m", base_url="http://127.0.0.1:9/v1", retry=FAST,
                             timeouts=Timeouts(connect_s=1.0))
        resp = await client.complete(requests_(1)[0])
        await client.aclose()
        return resp
    resp = run(go())
    assert resp.error == "connection" and resp.attempts == 3


# ---------------------------------------------------------------------------- breaker, budget, concurrency


def test_circuit_breaker_pauses_while_the_server_fails_then_resumes():
    """An open breaker holds requests back (a few probes reach the server) and lets them all through once a
    probe succeeds: nothing fails as circuit_open."""
    policy = CircuitPolicy(window=10, min_attempts=6, error_rate=0.5, cooldown_s=0.1, max_cooldown_s=0.2)
    reqs = requests_(40)

    async def go():
        async with FakeLLMServer(faults=[Fault.http(500, times=0)]) as server:
            client = make("anthropic", server, circuit=policy, max_concurrent=2)
            out = []
            task = asyncio.ensure_future(run_requests(client, reqs, out.append, progress=False))
            await asyncio.sleep(1.0)
            seen_while_failing, done_while_failing = len(server.requests_seen), len(out)
            server.faults.clear()  # the server recovers
            summary = await task
            await client.aclose()
            return out, seen_while_failing, done_while_failing, summary, client, server

    out, seen, done, summary, client, server = run(go())
    accounted(reqs, out)
    assert summary.succeeded == 40 and client.breaker.times_opened >= 1 and client.breaker.state == "closed"
    assert done == 0 and seen < 20, "while open, the breaker sends only probes (about one per pause)"
    assert sum(r.attempts for r in out) == len(server.requests_seen)


def test_sustained_failure_stops_the_run_with_the_server_message():
    policy = CircuitPolicy(window=10, min_attempts=4, error_rate=0.5, cooldown_s=0.05, max_outage_s=0.5)
    reqs = requests_(30)

    async def go():
        async with FakeLLMServer(faults=[Fault.http(500, times=0, message="backend pool exhausted")]) as server:
            client = make("anthropic", server, circuit=policy, max_concurrent=2)
            out = []
            with pytest.raises(ClientStopped) as e:
                await run_requests(client, reqs, out.append, progress=False)
            await client.aclose()
            return out, e.value

    out, stopped = run(go())
    accounted(reqs, out)
    message = str(stopped)
    assert "\n" not in message and "kept failing" in message and "backend pool exhausted" in message
    # not sent = never answered: nothing tried, or cut off by the open breaker (a rerun sends all of them)
    not_sent = sum(r.attempts == 0 or r.error == "circuit_open" for r in out)
    assert stopped.not_sent == not_sent == sum(r.error is not None for r in out) >= 20
    assert f"{not_sent} of 30 requests not sent" in message
    assert {r.error for r in out if r.attempts == 0} == {"circuit_open"}


def test_max_cost_is_never_exceeded():
    prices = Prices(models={"claude-haiku-4-5": ModelPrice(input=1000.0, output=1000.0)})  # ~ $0.05 per call
    reqs = requests_(30)
    server, client, out, summary = run(run_script("anthropic", reqs, {"latency_s": 0.01},
                                                  {"prices": prices, "max_cost": 1.5}))
    accounted(reqs, out)
    assert client.ledger.spent <= 1.5
    assert summary.failures.get("budget_exceeded", 0) >= 1 and summary.succeeded >= 1
    assert all(r.attempts == 0 for r in out if r.error == "budget_exceeded")
    assert len(server.requests_seen) == summary.succeeded
    assert client.ledger.reserved == pytest.approx(0.0)


@pytest.mark.parametrize("wire", WIRES)
def test_concurrency_is_bounded(wire):
    server, _, out, _ = run(run_script(wire, requests_(40), {"latency_s": 0.05}, {"max_concurrent": 5}))
    assert len(out) == 40 and 4 <= server.max_in_flight <= 5


def test_rate_limited_server_loses_nothing():
    reqs = requests_(30)
    server, _, out, summary = run(run_script("anthropic", reqs, {"rate_limit_rps": 60, "latency_s": 0.02},
                                             {"retry": RetryPolicy(max_attempts=50, base_delay_s=0.01)}))
    accounted(reqs, out)
    assert summary.succeeded == 30 and server.responses_sent == 30


# ---------------------------------------------------------------------------- runner


def test_run_requests_rejects_duplicate_ids_and_awaits_async_callbacks():
    async def go():
        async with FakeLLMServer() as server:
            client = make("anthropic", server)
            got = []

            async def on_result(r):
                await asyncio.sleep(0)
                got.append(r.custom_id)

            summary = await run_requests(client, iter(requests_(5)), on_result, progress=False)
            with pytest.raises(ClientConfigError, match="duplicate custom_id"):
                await run_requests(client, requests_(2) + requests_(1), got.append, progress=False)
            await client.aclose()
            return got, summary

    got, summary = run(go())
    assert sorted(got[:5]) == sorted(r.custom_id for r in requests_(5)) and summary.succeeded == 5


# ---------------------------------------------------------------------------- secrets


def test_api_key_never_reaches_logs_exceptions_or_results(caplog, capsys, monkeypatch, tmp_path):
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's included
    echo = f"invalid x-api-key {KEY}"  # servers do echo credentials in error bodies
    texts = []
    for wire in WIRES:
        faults = [Fault.http(400, message=echo, match="#000"), Fault.http(500, message=echo, times=2),
                  Fault.http(401, message=echo, match="#009")]
        server, client, out, summary = run(run_script(wire, requests_(10), {"faults": faults},
                                                      {"max_concurrent": 1}))
        assert {r.error for r in out} >= {"http_400", "http_401"}
        texts += [repr(r) for r in out] + [repr(summary), repr(client.ledger.totals()), repr(client.wire.__dict__)]
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    for make_bad in (lambda: make_client("openrouter", "m"), lambda: make_client("gemini", "m")):
        with pytest.raises(ClientConfigError) as e:
            make_bad()
        texts.append(str(e.value))
    assert caplog.text and "***" in caplog.text  # the echoed key was logged, redacted
    captured = capsys.readouterr()
    for text in [caplog.text, captured.out, captured.err, *texts]:
        assert KEY not in text
    assert KEY not in json.dumps([str(r.msg) for r in caplog.records] + [repr(r.args) for r in caplog.records])
