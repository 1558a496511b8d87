"""Anthropic Message Batches runner: out-of-order mixed results, restarts without double submission."""

import asyncio
import logging
import re
import time

import msgspec
import pytest

from clients import CompletionRequest, ModelPrice, Prices, RetryPolicy, make_client
from clients.anthropic_batches import (
    BatchPolicy,
    BatchState,
    PendingCreate,
    batch_custom_id,
    load_state,
    run_batches,
    save_state,
)
from clients.errors import ClientConfigError
from clients.structured import provider_schema
from clients.testing import FakeLLMServer, Fault, example_for_schema
from engine.core.schemas import ExplanationOutput

KEY = "sk-ant-batch-test-0123456789"
SCHEMA = provider_schema(ExplanationOutput)
POLICY = BatchPolicy(poll_interval_s=0.01)
PRICES = Prices(models={"claude-haiku-4-5": ModelPrice(input=1.0, output=5.0)})


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def run(coro):
    return asyncio.run(coro)


def requests_(n):
    return [CompletionRequest(custom_id=f"explain:blocks.{i % 3}.hook_resid_post/{i}", prompt=f"latent #{i:03d}",
                              system="rules " * 30, schema=SCHEMA) for i in range(n)]


def client_for(server, **kw):
    return make_client("anthropic", "claude-haiku-4-5", base_url=server.base_url, cache_ttl="1h", prices=PRICES,
                       retry=RetryPolicy(base_delay_s=0.01, max_delay_s=0.05, max_attempts=4), **kw)


async def batch_run(server, requests, state, on_result=None, **client_kw):
    client = client_for(server, **client_kw)
    out = []
    try:
        summary = await run_batches(client, requests, on_result or out.append, state, POLICY, progress=False)
    finally:
        await client.aclose()
    return out, summary, client


def test_custom_ids_are_batch_safe_and_distinct():
    ids = ["explain:blocks.2.hook_resid_post/17", "explain:blocks.2.hook_resid_post_17", "x" * 200, "ok-id_1"]
    safe = [batch_custom_id(i) for i in ids]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", s) for s in safe) and len(set(safe)) == len(ids)
    assert safe[0].startswith("explain_blocks_2_hook_resid_post_17-")


def test_mixed_out_of_order_results_all_accounted(tmp_path):
    faults = [Fault.of("batch_errored", match="#003"), Fault.of("batch_expired", match="#004"),
              Fault.of("batch_canceled", match="#005"), Fault.of("refusal", match="#006"),
              Fault.of("max_tokens", match="#007"), Fault.of("batch_missing", match="#008")]
    reqs = requests_(20)

    async def go():
        async with FakeLLMServer(faults=faults, batch_polls=3) as server:
            out, summary, client = await batch_run(server, reqs, tmp_path / "state.json")
            return server, out, summary, client

    server, out, summary, client = run(go())
    assert len(server.batches) == 1
    (batch,) = server.batches.values()
    sent_order = [i["custom_id"] for i in batch["_items"]]
    assert [r["custom_id"] for r in batch["_results"]] != sent_order  # the server really shuffled
    ids = [r.custom_id for r in out]
    assert sorted(ids) == sorted(r.custom_id for r in reqs) and len(set(ids)) == 20
    errors = {r.custom_id.rsplit("/", 1)[1]: r.error for r in out if r.error}
    assert errors == {"3": "http_400", "4": "expired", "5": "canceled", "6": "refusal", "7": "truncated",
                      "8": "missing_result"}
    ok = [r for r in out if r.error is None]
    assert all(r.parsed == example_for_schema(SCHEMA) for r in ok) and len(ok) == summary.succeeded == 14
    u = ok[0].usage  # batch price: half of everything, 1h cache writes at 2x input
    expected = 0.5 * (u.input_tokens + 5 * u.output_tokens + 0.1 * u.cache_read_input_tokens
                      + 2 * u.cache_creation_input_tokens) / 1e6
    assert u.cost_usd == pytest.approx(expected)
    assert client.ledger.requests == 20 and client.ledger.reserved == pytest.approx(0.0)
    params = batch["_items"][0]["params"]
    assert params["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert params["output_config"]["format"]["schema"] == SCHEMA
    state = load_state(tmp_path / "state.json")
    assert state.pending is None and [b.done for b in state.batches] == [True]


def test_restart_after_crash_resumes_the_same_batch(tmp_path):
    reqs = requests_(12)
    state = tmp_path / "state.json"

    def crash(response):
        raise KeyboardInterrupt  # the process dies while results are being handed over

    async def go():
        async with FakeLLMServer(batch_polls=2) as server:
            with pytest.raises(KeyboardInterrupt):
                await batch_run(server, reqs, state, on_result=crash)
            assert len(server.batches) == 1 and not load_state(state).batches[0].done
            out, summary, _ = await batch_run(server, reqs, state)
            again, _, _ = await batch_run(server, reqs[:3], state)  # done batch: these are asked for anew
            return server, out, summary, again

    server, out, summary, again = run(go())
    creates = [b for b in server.requests_seen if "requests" in b]
    assert len(creates) == 2 and len(server.batches) == 2
    assert sorted(r.custom_id for r in out) == sorted(r.custom_id for r in reqs) and summary.succeeded == 12
    assert sorted(r.custom_id for r in again) == sorted(r.custom_id for r in reqs[:3])


def test_interrupted_create_is_adopted_not_resubmitted(tmp_path):
    reqs = requests_(8)
    state = tmp_path / "state.json"
    ids = [batch_custom_id(r.custom_id) for r in reqs]

    async def go():
        async with FakeLLMServer() as server:
            # the create reached the server, then the process died before saving the batch id
            save_state(state, BatchState(pending=PendingCreate(started_at=time.time(), custom_ids=ids)))
            client = client_for(server)
            session = client.session()
            params = {"model": "m", "max_tokens": 5, "messages": []}
            body = {"requests": [{"custom_id": i, "params": params} for i in ids]}
            async with session.post(server.base_url + "/v1/messages/batches", json=body) as r:
                assert r.status == 200
            await client.aclose()
            out, summary, _ = await batch_run(server, reqs, state)
            return server, out, summary

    server, out, summary = run(go())
    assert len(server.batches) == 1 and summary.completed == 8
    assert load_state(state).pending is None


def test_interrupted_create_that_never_landed_is_submitted_once(tmp_path):
    reqs = requests_(5)
    state = tmp_path / "state.json"
    save_state(state, BatchState(pending=PendingCreate(started_at=time.time(),
                                                       custom_ids=[batch_custom_id(r.custom_id) for r in reqs])))

    async def go():
        async with FakeLLMServer() as server:
            out, summary, _ = await batch_run(server, reqs, state)
            return server, summary
    server, summary = run(go())
    assert len(server.batches) == 1 and summary.succeeded == 5


@pytest.mark.parametrize("fault, creates_seen", [
    (Fault.of("drop"), 1),          # created, reply lost: adopted from the listing
    (Fault.of("disconnect"), 2),    # lost before creation: sent again
    (Fault.http(529), 2),           # refused: sent again
])
def test_create_failures_never_double_submit(tmp_path, fault, creates_seen):
    reqs = requests_(6)

    async def go():
        async with FakeLLMServer(faults=[fault]) as server:
            out, summary, _ = await batch_run(server, reqs, tmp_path / "state.json")
            return server, summary
    server, summary = run(go())
    assert len(server.batches) == 1 and summary.succeeded == 6
    assert sum("requests" in b for b in server.requests_seen) == creates_seen


def test_batches_are_split_by_size(tmp_path):
    reqs = requests_(7)

    async def go():
        async with FakeLLMServer() as server:
            client = client_for(server)
            out = []
            await run_batches(client, reqs, out.append, tmp_path / "s.json", BatchPolicy(poll_interval_s=0.01,
                              max_requests=3), progress=False)
            await client.aclose()
            return server, out
    server, out = run(go())
    assert sorted(len(b["_items"]) for b in server.batches.values()) == [1, 3, 3] and len(out) == 7


def test_budget_cap_applies_to_batches(tmp_path):
    reqs = requests_(4)

    async def go():
        async with FakeLLMServer() as server:
            out, summary, _ = await batch_run(server, reqs, tmp_path / "s.json", max_cost=1e-6)
            return server, summary
    server, summary = run(go())
    assert summary.failures == {"budget_exceeded": 4} and not server.batches


def test_bad_input_is_a_one_line_error(tmp_path):
    state = tmp_path / "state.json"
    state.write_text("{not json")

    async def go():
        async with FakeLLMServer() as server:
            with pytest.raises(ClientConfigError, match="state.json"):
                await batch_run(server, requests_(2), state)
            with pytest.raises(ClientConfigError, match="duplicate custom_id"):
                await batch_run(server, requests_(2) + requests_(1), tmp_path / "other.json")
            client = make_client("openai-compatible", "m", base_url=server.base_url + "/v1")
            with pytest.raises(ClientConfigError, match="Anthropic client"):
                await run_batches(client, requests_(1), print, tmp_path / "x.json", progress=False)
            await client.aclose()
    run(go())


def test_batch_errors_and_state_keep_the_key_secret(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "state.json"

    async def go():
        async with FakeLLMServer(faults=[Fault.of("batch_errored")]) as server:
            out, _, _ = await batch_run(server, requests_(2), state)
        async with FakeLLMServer(api_key="sk-other-key-99999999") as server:
            with pytest.raises(ClientConfigError) as e:
                await batch_run(server, requests_(2), tmp_path / "s2.json")
        return out, str(e.value)
    out, message = run(go())
    assert "http_401" in message and "\n" not in message
    for text in [caplog.text, message, state.read_text(), repr(out), msgspec.json.encode(load_state(state)).decode()]:
        assert KEY not in text
