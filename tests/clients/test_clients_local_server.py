"""What a real local server (llama_cpp.server) does to our requests, reproduced with the fake server: raw
newlines in constrained JSON, a serial server still computing a request the client gave up on, and judge
prompts answered with one element per excerpt."""

import asyncio
import json

import pytest

from clients import CompletionRequest, RetryPolicy, Timeouts, make_client, run_requests
from clients.structured import decode_output, provider_schema
from clients.testing import FakeLLMServer, Fault
from clients.testing.schema_examples import default_responder
from engine.core.schemas import ExplanationOutput

SCHEMA = provider_schema(ExplanationOutput)


def requests_(n, schema=SCHEMA, prompt="latent #{i:03d}"):
    return [CompletionRequest(custom_id=f"x:{i}", prompt=prompt.format(i=i), system="rules", schema=schema)
            for i in range(n)]


async def _run(server, reqs, **kw):
    client = make_client("openai-compatible", "m", base_url=server.base_url + "/v1", **kw)
    out = []
    await run_requests(client, reqs, out.append, progress=False, raise_on_stop=False)
    await client.aclose()
    return out


@pytest.mark.parametrize("text", ['{"label": "one\ntwo", "reasoning": "tab\there", "confidence": "low"}',
                                  '```json\n{"label": "a\nb", "reasoning": "r", "confidence": "high"}\n```'])
def test_raw_control_characters_in_strings_are_read(text):
    value, error = decode_output(text, SCHEMA)
    assert error is None and value == json.loads(text.strip("`json\n"), strict=False)


def test_raw_newlines_from_the_server_parse():
    def responder(body):
        return {"label": "first line\nsecond line", "reasoning": "because", "confidence": "high"}

    async def go():
        async with FakeLLMServer(responder=responder, faults=[Fault.of("raw_newlines", times=0)]) as server:
            return await _run(server, requests_(3))
    out = asyncio.run(go())
    assert [r.error for r in out] == [None] * 3 and "\n" in out[0].text  # the raw newline really was sent
    assert all(r.parsed == responder({}) for r in out)


def test_serial_server_is_not_made_to_compute_a_request_twice():
    """A one-slot server, 4 requests at once, 0.15 s each: with the default read timeout every request is
    computed once; with a read timeout shorter than the queue, resends make it compute the same requests
    again; with read_timeout_retries=0 it never does (the late ones fail as timeout instead)."""
    async def go(**kw):
        async with FakeLLMServer(serial=True, latency_s=0.15, wire="openai") as server:
            out = await _run(server, requests_(4), max_concurrent=4, **kw)
            await asyncio.sleep(0.8)  # let the server finish what it still computes for abandoned attempts
            return out, server.responses_sent

    fast = RetryPolicy(base_delay_s=0.01, max_delay_s=0.02)
    out, computed = asyncio.run(go())
    assert all(r.error is None and r.attempts == 1 for r in out) and computed == 4
    out, computed = asyncio.run(go(timeouts=Timeouts(read_s=0.25), retry=fast))
    assert computed > 4, "resending after a read timeout made the serial server compute requests twice"
    out, computed = asyncio.run(go(timeouts=Timeouts(read_s=0.25), retry=RetryPolicy(read_timeout_retries=0)))
    assert computed == 4 and sum(r.attempts for r in out) == 4
    assert {r.error for r in out} == {None, "timeout"}


def test_judge_prompt_about_five_excerpts_gets_five_answers():
    answers = {"type": "object", "properties": {"answers": {"type": "array", "items": {"enum": [0, 1]}}},
               "required": ["answers"], "additionalProperties": False}
    prompt = "5 excerpts:\n" + "\n".join(f"Excerpt {k}: text {k}" for k in range(1, 6))
    body = {"messages": [{"role": "user", "content": prompt}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": answers}}}
    assert default_responder(body) == {"answers": [0] * 5}
    bounded = {**answers, "properties": {"answers": {**answers["properties"]["answers"], "maxItems": 3}}}
    body["response_format"]["json_schema"]["schema"] = bounded
    assert default_responder(body) == {"answers": [0] * 3}  # a schema's bounds come first
