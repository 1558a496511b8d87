"""A local LLM server that speaks both wire formats and misbehaves on cue.

A real `aiohttp.web` server on 127.0.0.1 (ephemeral port), so tests exercise
the real connector, pool, timeouts and keep-alive code:

  POST /v1/messages                     Anthropic Messages
  POST /v1/messages/batches             Anthropic Message Batches: create, then
  GET  /v1/messages/batches[/{id}[/results]]  list, poll, JSONL results (shuffled)
  POST /v1/messages/batches/{id}/cancel
  POST /v1/chat/completions             OpenAI-compatible (OpenRouter / vLLM / llama.cpp shapes)
  GET  /stats                           counters (requests seen, replies, faults served, peak in flight)

    async with FakeLLMServer(faults=[Fault.http(429, retry_after=0.1)]) as server:
        client = make_client("anthropic", "claude-haiku-4-5", base_url=server.base_url)

The reply text comes from `responder(request_json)` (a str, or a dict that is
JSON-encoded); by default a valid JSON object for the requested schema. Each
incoming completion request takes the first live `Fault` that matches it.
Usage is counted at ~4 characters per token; the prompt cache is simulated
(a prefix marked with cache_control is written once, then read).

Test and benchmark equipment, not used by the clients themselves. Modules:
faults (Fault, fault_mix), schema_examples (example_for_schema, the default
responder), simulation (state and behaviour both wire formats share),
anthropic_wire, batches_wire, openai_wire (one per wire format), server
(FakeLLMServer: the aiohttp app and its lifecycle), __main__ (the CLI).

CLI, for trying a client by hand:
    python -m clients.testing --port 8765 --wire anthropic [--latency 0.3] [--rate-limit 20] [--fault-rate 0.05]
"""

from __future__ import annotations

from clients.testing.faults import Fault
from clients.testing.schema_examples import example_for_schema
from clients.testing.server import FakeLLMServer

__all__ = ["FakeLLMServer", "Fault", "example_for_schema"]
