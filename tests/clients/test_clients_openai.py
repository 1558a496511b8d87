"""OpenAI-compatible client (OpenRouter, vLLM, llama.cpp shapes) against the fake server, and the server's CLI."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients import CompletionRequest, RetryPolicy, make_client
from clients.errors import ClientConfigError
from clients.structured import provider_schema
from clients.testing import FakeLLMServer, Fault, example_for_schema
from engine.core.schemas import ExplanationOutput

KEY = "sk-or-v1-test-abcdef0123456789"
SCHEMA = provider_schema(ExplanationOutput)
FAST = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05, max_attempts=3)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def run(coro):
    return asyncio.run(coro)


def request(i=0, **kw):
    base = dict(custom_id=f"detect:h/{i}", prompt=f"item {i}", system="rules", prefix="shared " * 30, schema=SCHEMA)
    return CompletionRequest(**{**base, **kw})


async def complete_all(provider, server_kw, requests, **client_kw):
    async with FakeLLMServer(**server_kw) as server:
        url = client_kw.pop("base_url", server.base_url + "/v1")
        client = make_client(provider, client_kw.pop("model", "anthropic/claude-haiku-4-5"), base_url=url,
                             retry=FAST, **client_kw)
        out = [await client.complete(r) for r in requests]
        await client.aclose()
        return server, client, out


def test_openrouter_body_auth_and_cost():
    server, client, (resp,) = run(complete_all("openrouter", {"openrouter": True, "api_key": KEY}, [request()]))
    body, headers = server.requests_seen[0], server.headers_seen[0]
    assert headers["Authorization"] == f"Bearer {KEY}" and headers["X-OpenRouter-Title"] == "autointerp-engine"
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "output", "strict": True, "schema": SCHEMA}}
    assert body["provider"] == {"require_parameters": True}
    system, user = body["messages"]
    assert system["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert user["content"][0] == {"type": "text", "text": "shared " * 30, "cache_control": {"type": "ephemeral"}}
    assert user["content"][1] == {"type": "text", "text": "item 0"}
    assert resp.error is None and resp.parsed == example_for_schema(SCHEMA)
    # OpenRouter's own usage.cost is the price; input_tokens is the uncached part of prompt_tokens
    prompt = sum(len(t) // 4 for t in ("rules", "shared " * 30, "item 0"))
    completion = len(resp.text) // 4
    assert resp.usage.cost_usd == pytest.approx(prompt * 1e-6 + completion * 5e-6)
    assert resp.usage.input_tokens + resp.usage.cache_creation_input_tokens == prompt
    assert client.ledger.spent == pytest.approx(resp.usage.cost_usd)


def test_local_server_needs_no_key_and_gets_plain_strings():
    server, _, (a, b) = run(complete_all("openai-compatible", {}, [request(0), request(1)], model="qwen"))
    body, headers = server.requests_seen[0], server.headers_seen[0]
    assert "Authorization" not in headers
    assert body["messages"] == [{"role": "system", "content": "rules"},
                                {"role": "user", "content": "shared " * 30 + "\n\nitem 0"}]
    assert "provider" not in body and "guided_json" not in body and "structured_outputs" not in body
    assert a.error is None and a.parsed == example_for_schema(SCHEMA)
    # no cache_control is sent to local servers (they cache prefixes on their own)
    assert a.usage.cache_creation_input_tokens == b.usage.cache_read_input_tokens == 0
    assert b.usage.input_tokens == sum(len(t) // 4 for t in ("rules", "shared " * 30 + "\n\nitem 1"))


def test_bare_host_base_url_gets_v1():
    async def go():
        async with FakeLLMServer() as server:
            client = make_client("openai-compatible", "m", base_url=server.base_url, retry=FAST)
            resp = await client.complete(request(schema=None))
            await client.aclose()
            return resp
    assert run(go()).text == "OK"


def test_openai_key_sent_when_set(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-secret-123")
    server, _, (resp,) = run(complete_all("openai-compatible", {"api_key": "sk-local-secret-123"}, [request()],
                                          model="m"))
    assert resp.error is None and server.headers_seen[0]["Authorization"] == "Bearer sk-local-secret-123"


@pytest.mark.parametrize("error_type, code, attempts", [
    ("provider_overloaded", None, 2), ("rate_limit_exceeded", None, 2), ("server", None, 2),
    ("context_length_exceeded", "provider_error", 1), ("invalid_prompt", "provider_error", 1),
])
def test_http_200_with_error_body(error_type, code, attempts):
    fault = Fault.of("error_200", error_type=error_type)
    server, _, (resp,) = run(complete_all("openrouter", {"openrouter": True, "faults": [fault]}, [request()]))
    assert resp.error == code and resp.attempts == attempts and len(server.requests_seen) == attempts


def test_402_in_flight_budget_is_retried_and_credits_stop_the_client():
    faults = [Fault.of("in_flight_budget", retry_after=0.05)]
    _, _, (resp,) = run(complete_all("openrouter", {"openrouter": True, "faults": faults}, [request()]))
    assert resp.error is None and resp.attempts == 2
    server, _, out = run(complete_all("openrouter", {"openrouter": True, "faults": [Fault.of("credits")]},
                                      [request(0), request(1)]))
    assert [r.error for r in out] == ["spend_limit", "spend_limit"] and [r.attempts for r in out] == [1, 0]
    assert len(server.requests_seen) == 1


def test_vllm_integer_error_code_is_classified():
    _, _, (resp,) = run(complete_all("openai-compatible", {"faults": [Fault.http(400, message="bad schema")]},
                                     [request()], model="m"))
    assert resp.error == "http_400" and resp.attempts == 1


@pytest.mark.parametrize("kind, error, stop", [("max_tokens", "truncated", "max_tokens"),
                                               ("refusal", "refusal", "refusal"),
                                               ("wrong_schema", "schema_mismatch", "end")])
def test_finish_reasons(kind, error, stop):
    _, _, (resp,) = run(complete_all("openai-compatible", {"faults": [Fault.of(kind)]}, [request()], model="m"))
    assert resp.error == error and resp.stop_reason == stop and resp.parsed is None and resp.attempts == 1


def test_logprobs_and_prompt_logprobs():
    req = request(schema=None, logprobs=3, prompt_logprobs=2, system="", prefix="", prompt="the cat sat down")
    server, _, (resp,) = run(complete_all("openai-compatible", {"responder": lambda b: "Yes, it is"}, [req], model="m"))
    body = server.requests_seen[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 3 and body["prompt_logprobs"] == 2
    assert "".join(alts[0][0] for alts in resp.logprobs) == "Yes, it is"
    assert all(len(alts) == 3 and alts[0][1] >= alts[1][1] >= alts[2][1] for alts in resp.logprobs)
    words = "the cat sat down".split()
    assert len(resp.prompt_logprobs) == len(words) and resp.prompt_logprobs[0] == []  # vLLM's leading null
    for word, alts in zip(words[1:], resp.prompt_logprobs[1:]):
        assert alts[0] == ("tok0", -0.5) and (word, -1.5) in alts  # ranked; the actual token is kept
        assert [lp for _, lp in alts[:2]] == sorted([lp for _, lp in alts[:2]], reverse=True)


def test_openrouter_rejects_prompt_logprobs():
    async def go():
        client = make_client("openrouter", "m", base_url="http://127.0.0.1:9/v1")
        with pytest.raises(ClientConfigError, match="prompt_logprobs"):
            await client.complete(request(prompt_logprobs=1))
    run(go())


def test_client_reused_across_event_loops():
    async def serve_twice():
        async with FakeLLMServer() as server:
            client = make_client("openai-compatible", "m", base_url=server.base_url + "/v1", retry=FAST)
            loop = asyncio.get_running_loop()
            first = await loop.run_in_executor(None, lambda: asyncio.run(client.complete(request(0, schema=None))))
            second = await loop.run_in_executor(None, lambda: asyncio.run(client.complete(request(1, schema=None))))
            return first, second
    first, second = run(serve_twice())
    assert first.text == second.text == "OK"


def test_server_in_thread_for_synchronous_callers():
    server = FakeLLMServer().start_in_thread()
    try:
        client = make_client("openai-compatible", "m", base_url=server.base_url + "/v1", retry=FAST)

        async def go():
            resp = await client.complete(request(schema=None))
            await client.aclose()
            return resp
        assert run(go()).text == "OK" and len(server.requests_seen) == 1
    finally:
        server.stop()


def test_cli_serves_both_wires():
    proc = subprocess.Popen([sys.executable, "-m", "clients.testing", "--port", "0", "--wire", "both"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert "[anthropic]" in lines[0] and "[openai]" in lines[1], lines
        base = lines[0].split(" on ")[1].split()[0]
        os.environ["ANTHROPIC_API_KEY"] = "sk-ant-cli-test-000000"

        async def go():
            a = make_client("anthropic", "claude-haiku-4-5", base_url=base, retry=FAST)
            o = make_client("openai-compatible", "m", base_url=base + "/v1", retry=FAST)
            out = [await a.complete(request(schema=None)), await o.complete(request(schema=None))]
            await a.aclose()
            await o.aclose()
            return out
        assert [r.text for r in run(go())] == ["OK", "OK"]
    finally:
        os.environ.pop("ANTHROPIC_API_KEY", None)
        proc.terminate()
        proc.wait(timeout=10)


def test_responder_sees_request_and_dict_replies_are_encoded():
    seen = []

    def responder(body):
        seen.append(body)
        return {"reasoning": "r", "label": body["messages"][-1]["content"], "confidence": "low"}

    _, _, (resp,) = run(complete_all("openai-compatible", {"responder": responder}, [request(prefix="")], model="m"))
    assert resp.parsed == {"reasoning": "r", "label": "item 0", "confidence": "low"}
    assert json.loads(resp.text) == resp.parsed and seen[0]["model"] == "m"


def test_the_generated_token_comes_first_among_its_alternatives():
    """llama.cpp under a grammar: top_logprobs are the pre-grammar ranking, so what was sampled ("1") may be
    listed second or not at all; it must come first, since every reader takes alternatives[0] as generated."""
    import msgspec

    from clients.openai_compat import _TokenLogprob, generated_first

    listed = msgspec.json.decode(b'{"token": "1", "logprob": -1.2, "top_logprobs": [{"token": "{", "logprob": -0.3},'
                                 b' {"token": "1", "logprob": -1.2}, {"token": "0", "logprob": -2.0}]}', type=_TokenLogprob)
    assert generated_first(listed) == [("1", -1.2), ("{", -0.3), ("0", -2.0)]
    absent = msgspec.json.decode(b'{"token": "7", "logprob": -4.0, "top_logprobs": [{"token": "{", "logprob": -0.1}]}',
                                 type=_TokenLogprob)
    assert generated_first(absent) == [("7", -4.0), ("{", -0.1)]
    bare = msgspec.json.decode(b'{"token": "x", "logprob": -0.5}', type=_TokenLogprob)
    assert generated_first(bare) == [("x", -0.5)]
