"""Anthropic's structured output refuses numeric, length and item-count bounds: the client folds them into
descriptions for the request and still holds the reply to the full schema; the fake server refuses them as
the API does."""

import asyncio

from clients import make_client
from clients.base import CompletionRequest
from clients.structured import anthropic_refusals, anthropic_schema, decode_output
from clients.testing import FakeLLMServer

JUDGE = {"type": "object", "additionalProperties": False, "required": ["answers", "maximum"],
         "properties": {"answers": {"type": "array", "minItems": 5, "maxItems": 5,
                                    "items": {"type": "integer", "minimum": 0, "maximum": 1}},
                        "maximum": {"type": "string", "maxLength": 80, "description": "a field named like a keyword"}}}


def test_anthropic_schema_folds_every_refused_bound_into_descriptions():
    sent = anthropic_schema(JUDGE)
    assert anthropic_refusals(sent) == [] and sorted(set(anthropic_refusals(JUDGE))) == [
        "maxItems", "maxLength", "maximum", "minItems", "minimum"]
    assert set(sent["properties"]) == {"answers", "maximum"}  # field names are not keywords
    assert "minItems 5" in sent["properties"]["answers"]["description"]
    assert sent["properties"]["maximum"]["description"].startswith("a field named like a keyword (maxLength 80")
    assert anthropic_schema({"type": "array", "minItems": 1, "items": {}}) == {"type": "array", "minItems": 1, "items": {}}
    # the reply is still checked against the bounds
    assert decode_output('{"answers": [0, 1], "maximum": "x"}', JUDGE)[1] is not None
    assert decode_output('{"answers": [0, 1, 0, 1, 1], "maximum": "x"}', JUDGE)[1] is None
    long = "y" * 120  # past maxLength 80: a grammar's bound, not a reason to throw a good reply away
    assert decode_output('{"answers": [0, 1, 0, 1, 1], "maximum": "%s"}' % long, JUDGE) == (
        {"answers": [0, 1, 0, 1, 1], "maximum": long}, None)
    assert decode_output('{"answers": [0, 1, 0, 1, 2], "maximum": "x"}', JUDGE)[1] is not None  # numbers still held


def test_bounded_schemas_reach_the_fake_anthropic_server(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-bounds")

    def responder(body):
        return '{"answers": [1, 0, 1, 0, 1], "maximum": "ok"}'

    server = FakeLLMServer(responder=responder, api_key="sk-test-bounds").start_in_thread()
    try:
        async def go():
            client = make_client("anthropic", "claude-haiku-4-5", base_url=server.base_url)
            try:
                return await client.complete(CompletionRequest(custom_id="j", prompt="judge", schema=JUDGE, max_tokens=50))
            finally:
                await client.aclose()

        r = asyncio.run(go())
    finally:
        server.stop()
    assert r.error is None and r.parsed == {"answers": [1, 0, 1, 0, 1], "maximum": "ok"}
    sent = server.requests_seen[-1]["output_config"]["format"]["schema"]
    assert anthropic_refusals(sent) == []
