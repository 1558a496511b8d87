"""The official `anthropic` SDK as the oracle of the wire format (a test extra; the clients never import it).

Every Messages and Message Batches body the client sends (as the fake server received it) validates against
the SDK's request TypedDicts with nothing dropped: pydantic ignores unknown keys of a TypedDict, so the body
must equal its validated round trip. The one field outside the SDK's types is `temperature`: the SDK (2.15,
API version 2026-10-21) no longer has it, our requests use API version 2023-06-01, which takes it for models
before 4.7, and the capability table keeps it from the rest. Every reply the fake server sends (messages,
errors, batch objects, listings, JSONL result lines) parses with the SDK's response models."""

import asyncio
import json

import pytest

anthropic = pytest.importorskip("anthropic")
from anthropic.types import ErrorResponse, Message, message_create_params
from anthropic.types.messages import (
    BatchCreateParams,
    MessageBatch,
    MessageBatchIndividualResponse,
)
from pydantic import TypeAdapter

from clients import CompletionRequest, make_client, run_requests
from clients.anthropic_batches import BatchPolicy, run_batches
from clients.capabilities import known
from clients.structured import provider_schema
from clients.testing import FakeLLMServer, Fault
from engine.core.schemas import ExplanationOutput

SCHEMA = provider_schema(ExplanationOutput)
MESSAGE_PARAMS = TypeAdapter(message_create_params.MessageCreateParamsNonStreaming)
BATCH_PARAMS = TypeAdapter(BatchCreateParams)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-oracle-test-000000")


def requests_():
    return [CompletionRequest(custom_id="a:1", prompt="latent 1", system="rules", prefix="shared", schema=SCHEMA),
            CompletionRequest(custom_id="a:2", prompt="latent 2", schema=SCHEMA, max_tokens=64),
            CompletionRequest(custom_id="a:3", prompt="plain", system="rules"),
            CompletionRequest(custom_id="a:4", prompt="", prefix="only a prefix", temperature=0.7)]


def sdk_round_trip(adapter: TypeAdapter, body: dict) -> dict:
    return adapter.dump_python(adapter.validate_python(body), mode="json")


def check_params(model: str, params: dict) -> None:
    params = dict(params)
    sent_temperature = params.pop("temperature", None) is not None
    assert sent_temperature == ("temperature" not in known(model).drop), params
    assert sdk_round_trip(MESSAGE_PARAMS, params) == params  # nothing unknown to the SDK, nothing ill-typed


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-haiku-5-5"])
@pytest.mark.parametrize("ttl", ["5m", "1h"])
def test_every_request_body_validates_against_the_sdk(model, ttl, tmp_path):
    async def go():
        async with FakeLLMServer(wire="anthropic") as server:
            client = make_client("anthropic", model, base_url=server.base_url, cache_ttl=ttl)
            await run_requests(client, requests_(), lambda r: None, progress=False)
            await run_batches(client, requests_(), lambda r: None, tmp_path / "b.json",
                              BatchPolicy(poll_interval_s=0.01), progress=False)
            await client.aclose()
            return server.requests_seen
    seen = asyncio.run(go())
    messages = [b for b in seen if "messages" in b]
    creates = [b for b in seen if "requests" in b]
    assert len(messages) == 4 and len(creates) == 1 and len(creates[0]["requests"]) == 4
    for body in messages:
        check_params(model, body)
    for entry in creates[0]["requests"]:
        check_params(model, entry["params"])
    bare = {"requests": [{**e, "params": {k: v for k, v in e["params"].items() if k != "temperature"}}
                         for e in creates[0]["requests"]]}
    assert sdk_round_trip(BATCH_PARAMS, bare) == bare


def test_every_reply_of_the_fake_server_parses_with_the_sdk(tmp_path):
    """Messages (plain, with a thinking block, refused, cut off), every scripted error status, and the Batches
    objects, listing and result lines (succeeded, errored, canceled, expired)."""
    statuses = [400, 401, 403, 404, 413, 429, 500, 504, 529]
    content = [Fault.of("refusal", match="#r"), Fault.of("max_tokens", match="#m")]
    batch_items = [Fault.of(k, match=f"#{k}") for k in ("batch_errored", "batch_canceled", "batch_expired")]

    async def go():
        replies: dict[str, list] = {"message": [], "error": [], "batch": [], "list": [], "result": []}
        async with FakeLLMServer(wire="anthropic", thinking_block=True,
                                 faults=content + batch_items + [Fault.of("spend_limit", match="#spend")]
                                 + [Fault.http(s, match=f"#s{s}") for s in statuses]) as server:
            import aiohttp

            headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
            async with aiohttp.ClientSession(base_url=server.base_url, headers=headers) as http:
                for tag in ["#ok", "#r", "#m", "#spend", *(f"#s{s}" for s in statuses)]:
                    body = {"model": "claude-haiku-4-5", "max_tokens": 32,
                            "messages": [{"role": "user", "content": f"hi {tag}"}]}
                    async with http.post("/v1/messages", json=body) as r:
                        replies["message" if r.status == 200 else "error"].append(await r.json())
                items = [{"custom_id": f"i{k}", "params": {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [
                    {"role": "user", "content": f"x #{tag}"}]}} for k, tag in
                    enumerate(["ok", "batch_errored", "batch_canceled", "batch_expired"])]
                async with http.post("/v1/messages/batches", json={"requests": items}) as r:
                    created = await r.json()
                replies["batch"].append(created)
                for path in (f"/v1/messages/batches/{created['id']}", f"/v1/messages/batches/{created['id']}"):
                    async with http.get(path) as r:
                        replies["batch"].append(await r.json())
                async with http.get("/v1/messages/batches?limit=5") as r:
                    replies["list"].append(await r.json())
                async with http.get(replies["batch"][-1]["results_url"].replace(server.base_url, "")) as r:
                    replies["result"] += [json.loads(line) for line in (await r.text()).splitlines()]
        return replies

    replies = asyncio.run(go())
    assert len(replies["message"]) == 3 and len(replies["error"]) == len(statuses) + 1
    parsed = [Message.model_validate(m) for m in replies["message"]]
    assert [m.stop_reason for m in parsed] == ["end_turn", "refusal", "max_tokens"]
    assert [b.type for b in parsed[0].content] == ["thinking", "text"]
    assert {ErrorResponse.model_validate(e).error.type for e in replies["error"]} >= {
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
        "rate_limit_error", "api_error", "overloaded_error", "timeout_error"}  # the SDK has no request_too_large
    batches = [MessageBatch.model_validate(b) for b in replies["batch"] + replies["list"][0]["data"]]
    assert batches[-2].processing_status == "ended" and batches[-2].results_url
    results = [MessageBatchIndividualResponse.model_validate(r) for r in replies["result"]]
    assert sorted(r.result.type for r in results) == ["canceled", "errored", "expired", "succeeded"]
