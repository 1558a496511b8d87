"""Anthropic Messages client against the local fake server: body, headers, usage, cost, result errors."""

import asyncio
import json

import pytest

from clients import CompletionRequest, ModelPrice, Prices, RetryPolicy, make_client
from clients.errors import ClientConfigError
from clients.structured import provider_schema
from clients.testing import FakeLLMServer, Fault, example_for_schema
from engine.core.schemas import ExplanationOutput

KEY = "sk-ant-test-0123456789abcdef"
SCHEMA = provider_schema(ExplanationOutput)
FAST = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05, max_attempts=4)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def run(coro):
    return asyncio.run(coro)


def request(i=0, **kw):
    base = dict(custom_id=f"explain:blocks.2.hook_resid_post/{i}", prompt=f"examples of latent {i}",
                system="You explain latents. " * 20, prefix="Shared few-shot examples. " * 40, schema=SCHEMA)
    return CompletionRequest(**{**base, **kw})


async def complete_all(server_kw, requests, client_kw=None):
    async with FakeLLMServer(**server_kw) as server:
        client = make_client("anthropic", "claude-haiku-4-5", base_url=server.base_url, retry=FAST, **(client_kw or {}))
        out = [await client.complete(r) for r in requests]
        await client.aclose()
        return server, client, out


def test_body_headers_and_structured_output():
    server, _, (resp,) = run(complete_all({"api_key": KEY}, [request()]))
    body, headers = server.requests_seen[0], server.headers_seen[0]
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert body["model"] == "claude-haiku-4-5" and body["max_tokens"] == 512
    assert body["system"] == [{"type": "text", "text": "You explain latents. " * 20,
                               "cache_control": {"type": "ephemeral"}}]
    prefix, prompt = body["messages"][0]["content"]
    assert prefix["cache_control"] == {"type": "ephemeral"} and "cache_control" not in prompt
    assert prompt["text"] == "examples of latent 0"
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "output_format" not in body and "tools" not in body  # deprecated / non-portable forms never sent
    assert resp.error is None and resp.stop_reason == "end" and resp.attempts == 1
    assert resp.parsed == example_for_schema(SCHEMA)
    assert resp.custom_id == "explain:blocks.2.hook_resid_post/0"


def test_cache_usage_and_cost_from_price_table():
    prices = Prices(models={"claude-haiku-4-5": ModelPrice(input=1.0, output=5.0)})
    server, client, (first, second) = run(complete_all({}, [request(0), request(1)], {"prices": prices}))
    # the fake counts len(text) // 4 tokens per block; system + prefix are the cached part
    cached = len("You explain latents. " * 20) // 4 + len("Shared few-shot examples. " * 40) // 4
    assert first.usage.cache_creation_input_tokens == cached and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == cached and second.usage.cache_creation_input_tokens == 0
    u = second.usage
    expected = (u.input_tokens * 1.0 + u.output_tokens * 5.0 + cached * 0.1) / 1e6
    assert u.cost_usd == pytest.approx(expected)
    u1 = first.usage
    assert u1.cost_usd == pytest.approx((u1.input_tokens * 1.0 + u1.output_tokens * 5.0 + cached * 1.25) / 1e6)
    totals = client.ledger.totals()
    assert totals.cost_usd == pytest.approx(u.cost_usd + u1.cost_usd) and totals.requests == 2
    assert totals.cache_read_input_tokens == cached


def test_one_hour_cache_ttl_priced_at_twice_input():
    server, _, (resp,) = run(complete_all({}, [request()], {"cache_ttl": "1h"}))
    assert server.requests_seen[0]["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    u = resp.usage
    assert u.cost_usd == pytest.approx((u.input_tokens + 5 * u.output_tokens + 2 * u.cache_creation_input_tokens) / 1e6)


def test_no_cache_counters_below_minimum_prefix():
    _, _, (resp,) = run(complete_all({"cache_min_tokens": 100_000}, [request(0)]))
    assert resp.usage.cache_read_input_tokens == 0 and resp.usage.cache_creation_input_tokens == 0


def test_thinking_block_first_text_picked_by_type():
    _, _, (resp,) = run(complete_all({"thinking_block": True}, [request()]))
    assert resp.error is None and resp.parsed == example_for_schema(SCHEMA)
    assert "Let me think" not in resp.text


@pytest.mark.parametrize("kind, error, stop", [
    ("refusal", "refusal", "refusal"),
    ("max_tokens", "truncated", "max_tokens"),
    ("truncate", "invalid_json", "end"),
    ("bad_json", "invalid_json", "end"),
    ("wrong_schema", "schema_mismatch", "end"),
])
def test_unusable_outputs_are_results_not_retries(kind, error, stop):
    server, client, (resp,) = run(complete_all({"faults": [Fault.of(kind)]}, [request()]))
    assert resp.error == error and resp.stop_reason == stop and resp.parsed is None
    assert resp.attempts == 1 and len(server.requests_seen) == 1
    assert resp.usage.output_tokens > 0 and client.ledger.failures[error] == 1  # billed all the same


def test_fenced_and_prefixed_json_accepted():
    value = example_for_schema(SCHEMA)
    replies = iter([f"```json\n{json.dumps(value)}\n```", f"Here you go: {json.dumps(value)}"])
    _, _, out = run(complete_all({"responder": lambda body: next(replies)}, [request(0), request(1)]))
    assert [r.parsed for r in out] == [value, value] and all(r.error is None for r in out)


def test_plain_text_without_schema():
    _, _, (resp,) = run(complete_all({"responder": lambda body: "a label"}, [request(schema=None)]))
    assert resp.text == "a label" and resp.parsed is None and resp.error is None


def test_temperature_dropped_when_model_rejects_it():
    fault = Fault.http(400, message="temperature: not supported for this model", match='"temperature"', times=0)
    server, _, (a, b) = run(complete_all({"faults": [fault]}, [request(0), request(1)]))
    assert a.error is None and a.attempts == 2 and b.attempts == 1
    assert ["temperature" in body for body in server.requests_seen] == [True, False, False]


def test_logprobs_request_is_a_configuration_error():
    async def go():
        client = make_client("anthropic", "claude-haiku-4-5", base_url="http://127.0.0.1:9")
        with pytest.raises(ClientConfigError, match="no logprobs"):
            await client.complete(request(logprobs=5))
    run(go())


def test_prices_lookup_and_batch_discount():
    prices = Prices()
    assert prices.lookup("claude-haiku-4-5-20251001") is prices.models["claude-haiku-4-5"]
    assert prices.lookup("anthropic/claude-sonnet-4-5") is prices.models["claude-sonnet-4-5"]
    assert prices.lookup("claude-haiku-4") is None and prices.lookup("gpt-9") is None
    p = ModelPrice(input=3.0, output=15.0)
    assert p.cost(1_000_000, 0) == pytest.approx(3.0)
    m = 1_000_000
    assert p.cost(0, 0, cache_read=m, cache_write_5m=m, cache_write_1h=m) == pytest.approx(0.3 + 3.75 + 6)
    assert p.cost(1_000_000, 1_000_000, batch=True) == pytest.approx(9.0)


@pytest.mark.parametrize("provider, env", [("anthropic", "ANTHROPIC_API_KEY"), ("openrouter", "OPENROUTER_API_KEY")])
def test_missing_key_names_the_variable(monkeypatch, provider, env):
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(ClientConfigError, match=env) as e:
        make_client(provider, "m")
    assert "\n" not in str(e.value)


def test_configuration_errors():
    with pytest.raises(ClientConfigError, match="unknown provider"):
        make_client("gemini", "m")
    with pytest.raises(ClientConfigError, match="base_url"):
        make_client("openai-compatible", "m")
    with pytest.raises(ClientConfigError, match="MY_KEY"):
        make_client("openai-compatible", "m", base_url="http://127.0.0.1:1/v1", api_key_env="MY_KEY")
    with pytest.raises(ClientConfigError, match="no price"):
        make_client("anthropic", "claude-unknown-9", max_cost=1.0)
    with pytest.raises(ClientConfigError, match="max_concurrent"):
        make_client("anthropic", "claude-haiku-4-5", max_concurrent=0)
