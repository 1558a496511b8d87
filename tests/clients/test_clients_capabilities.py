"""What a model accepts: the capability table, drops learned from refusals (applied to everything queued,
to retries and to Batches, persisted in the run folder), and the structured-output shape a local server takes.

The fake server plays a model that refuses `temperature` with a 400 (`reject_fields`) and llama_cpp.server,
which refuses `response_format: json_schema` with a 500 (`llama_cpp=True`)."""

import asyncio
import json

import pytest

from clients import CompletionRequest, make_client, run_requests
from clients.anthropic_batches import BatchPolicy, run_batches
from clients.capabilities import FILE, known, refused_field, refuses_format
from clients.errors import ClientStopped
from clients.structured import provider_schema
from clients.testing import FakeLLMServer, Fault
from engine.core.schemas import ExplanationOutput

SCHEMA = provider_schema(ExplanationOutput)


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-caps-test-0000000")


def requests_(n):
    return [CompletionRequest(custom_id=f"explain:h/{i}", prompt=f"latent #{i:03d}", system="rules", schema=SCHEMA)
            for i in range(n)]


async def _run(server, model, reqs, state_dir, provider="anthropic", **kw):
    url = server.base_url if provider == "anthropic" else server.base_url + "/v1"
    client = make_client(provider, model, base_url=url, state_dir=state_dir, **kw)
    out = []
    await run_requests(client, reqs, out.append, progress=False)
    await client.aclose()
    return out


@pytest.mark.parametrize(("model", "drops"), [
    ("claude-haiku-4-5", False), ("claude-haiku-4-5-20251001", False), ("claude-sonnet-4-5", False),
    ("claude-3-5-sonnet-20241022", False), ("claude-opus-4-20250514", False), ("claude-opus-4-7", True),
    ("claude-haiku-5-5", True), ("anthropic/claude-sonnet-5-5", True), ("anthropic/claude-4.7-opus", True),
    ("claude-opus-4-7-20260416", True), ("local-model", False),
    ("anthropic/claude-opus-4.7", True), ("anthropic/claude-haiku-5.5", True), ("anthropic/claude-sonnet-4.5", False),
])
def test_capability_table(model, drops):
    assert ("temperature" in known(model).drop) == drops


def test_refusal_messages_are_read_only_for_fields_we_sent():
    assert refused_field("`temperature` is deprecated for this model.", {"temperature": 0}) == "temperature"
    assert refused_field("`temperature` is deprecated for this model.", {}) is None
    assert refused_field("temperature: 0.0", {"temperature": 0}) is None  # no refusal wording
    assert refuses_format("response_format.type\n  Input should be 'text' or 'json_object'")
    assert not refuses_format("prompt is too long: 9000 tokens > 8192")


def test_known_model_is_never_sent_temperature(tmp_path):
    async def go():
        async with FakeLLMServer(reject_fields=("temperature",)) as server:
            return server, await _run(server, "claude-haiku-5-5", requests_(8), tmp_path)
    server, out = asyncio.run(go())
    assert all(r.error is None and r.attempts == 1 for r in out)
    assert not any("temperature" in b for b in server.requests_seen)


def test_learned_drop_applies_to_everything_queued_and_persists(tmp_path):
    """A model the table does not know refuses temperature: of 200 requests at 32-way concurrency none is lost
    (at most those already in flight are sent with it, each resent at once), and the next client reads the
    drop from the run folder and never sends it."""
    async def go():
        async with FakeLLMServer(reject_fields=("temperature",), latency_s=0.02) as server:
            first = await _run(server, "claude-haiku-4-5", requests_(200), tmp_path, max_concurrent=32)
            seen_first = list(server.requests_seen)
            second = await _run(server, "claude-haiku-4-5", requests_(20), tmp_path, max_concurrent=32)
            return first, seen_first, second, server.requests_seen[len(seen_first):]
    first, seen_first, second, seen_second = asyncio.run(go())
    assert all(r.error is None for r in first + second)
    with_temperature = sum("temperature" in b for b in seen_first)
    assert 1 <= with_temperature <= 16  # the first window (AdaptivePolicy.initial) at most
    assert len(seen_first) == 200 + with_temperature and sum(r.attempts for r in first) == len(seen_first)
    saved = json.loads((tmp_path / FILE).read_text())
    assert saved == {"claude-haiku-4-5": {"drop": ["temperature"]}}
    assert len(seen_second) == 20 and not any("temperature" in b for b in seen_second)


def test_batches_learn_the_drop_and_lose_nothing(tmp_path):
    """Batch items errored for `temperature` are submitted again without it; the next run's batch has none."""
    policy = BatchPolicy(poll_interval_s=0.01)

    async def go():
        async with FakeLLMServer(reject_fields=("temperature",)) as server:
            outs = []
            for run in range(2):
                client = make_client("anthropic", "claude-haiku-4-5", base_url=server.base_url, cache_ttl="1h",
                                     state_dir=tmp_path)
                out = []
                await run_batches(client, requests_(30), out.append, tmp_path / f"batches{run}.json", policy,
                                  progress=False)
                await client.aclose()
                outs.append(out)
            return outs, server
    (first, second), server = asyncio.run(go())
    assert all(r.error is None for r in first + second) and len(first) == len(second) == 30
    batches = list(server.batches.values())
    with_temperature = [all("temperature" in i["params"] for i in b["_items"]) for b in batches]
    assert with_temperature == [True, False, False]  # submitted, resubmitted without it, the next run's
    assert [len(b["_items"]) for b in batches] == [30, 30, 30]


def test_resubmitted_batches_hold_their_cost_in_the_ledger_like_the_first(tmp_path):
    """The resubmission (without the rejected field) reserves its worst case before it is sent, and is
    refused past the budget like any batch; every reservation is released once its results are in."""
    policy = BatchPolicy(poll_interval_s=0.01)

    async def go():
        async with FakeLLMServer(reject_fields=("temperature",)) as server:
            client = make_client("anthropic", "claude-haiku-4-5", base_url=server.base_url, state_dir=tmp_path)
            held, real = [], client.ledger.reserve
            client.ledger.reserve = lambda est: held.append(est) or real(est)
            out = []
            await run_batches(client, requests_(30), out.append, tmp_path / "b.json", policy, progress=False)
            await client.aclose()
            return out, held, client.ledger
    out, held, ledger = asyncio.run(go())
    assert all(r.error is None for r in out) and len(out) == 30
    assert len(held) == 2 and held[1] > 0  # the first batch, then its resubmission
    assert ledger.reserved == 0


def test_llama_cpp_server_gets_json_object_with_schema(tmp_path):
    """llama_cpp.server refuses json_schema with a 500: the client switches to {type: json_object, schema} at
    once (never retried as a server error), remembers it per model in the run folder."""
    async def go():
        async with FakeLLMServer(llama_cpp=True, wire="openai") as server:
            out = await _run(server, "smollm2", requests_(12), tmp_path, provider="openai-compatible",
                             max_concurrent=1)
            again = await _run(server, "smollm2", requests_(3), tmp_path, provider="openai-compatible")
            return out, again, server
    out, again, server = asyncio.run(go())
    assert all(r.error is None and r.parsed is not None for r in out + again)
    kinds = [b["response_format"]["type"] for b in server.requests_seen]
    assert kinds == ["json_schema"] + ["json_object"] * 15
    assert all(b["response_format"]["schema"] == SCHEMA for b in server.requests_seen[1:])
    assert json.loads((tmp_path / FILE).read_text())["smollm2"]["response_format"] == "json_object"


def test_server_refusing_every_format_stops_at_once_with_its_message(tmp_path):
    """A 500 naming the structured-output format, whichever shape is sent: no 8 retries, no breaker, one
    line with the server's own words."""
    refusal = Fault.http(500, times=0, message="response_format is not supported by this backend")

    async def go():
        async with FakeLLMServer(faults=[refusal], wire="openai") as server:
            with pytest.raises(ClientStopped) as e:
                await _run(server, "m", requests_(20), tmp_path, provider="openai-compatible", max_concurrent=2)
            return e.value, server
    stopped, server = asyncio.run(go())
    message = str(stopped)
    assert "unsupported_request" in message and "response_format is not supported by this backend" in message
    assert len(server.requests_seen) <= 4, "both shapes tried once (plus what was in flight), nothing retried"


def _learn_many(state_dir, who: int, start, n: int) -> None:
    """One shard's client: its store opened before any other saved, then n facts learned one save at a time."""
    from clients.capabilities import CapabilityStore

    store = CapabilityStore("shared-model", state_dir)
    start.wait()
    for i in range(n):
        store.learn_drop(f"field_{who}_{i}")
    if who == 0:
        store.learn_format_refused("json_schema")


def test_shards_learning_at_once_lose_none_of_each_others_facts(tmp_path):
    """Four processes share one run folder and save 25 facts each at the same time: the file ends with all 100
    and the refused format, and a client opened afterwards starts from every one of them."""
    import multiprocessing

    from clients.capabilities import CapabilityStore

    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_learn_many, args=(tmp_path, w, start, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    saved = json.loads((tmp_path / FILE).read_text())["shared-model"]
    assert sorted(saved["drop"]) == sorted(f"field_{w}_{i}" for w in range(4) for i in range(25))
    assert saved["refused_formats"] == ["json_schema"] and saved["response_format"] == "json_object"
    later = CapabilityStore("shared-model", tmp_path)
    assert later.drops("field_3_24") and later.caps.response_format == "json_object"
    assert not list(tmp_path.glob("*.tmp"))  # every process's temporary file was renamed into place
