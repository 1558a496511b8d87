"""Async LLM clients (aiohttp + msgspec): Anthropic Messages, OpenRouter, local OpenAI-compatible servers.

    client = make_client("anthropic", "claude-haiku-4-5", max_cost=5.0)
    summary = await run_requests(client, requests, on_result)
    await client.aclose()

Every client bounds and adapts its concurrency, retries transient failures
with jittered backoff (honouring retry-after), pauses behind a circuit
breaker while the server keeps failing, learns what the model accepts
(clients.capabilities), keeps a cost ledger with an optional dollar cap,
and returns a classified error instead of raising for a per-request failure.

The names below are loaded on first use (PEP 562), so `import clients.errors`
or `import clients.usage` does not pull in aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.anthropic import AnthropicWire
    from clients.base import ERROR_CODES, Client, CompletionRequest, CompletionResponse
    from clients.config import AdaptivePolicy, CircuitPolicy, ModelPrice, Prices, RetryPolicy, Timeouts
    from clients.errors import ClientConfigError, ClientStopped
    from clients.factory import PROVIDERS, make_client
    from clients.http_client import HTTPClient
    from clients.keys import read_key
    from clients.ledger import CostLedger
    from clients.openai_compat import OpenAIWire
    from clients.runner import RunSummary, run_requests, until_stopped
    from clients.usage import Usage

_HOMES = {
    "AnthropicWire": "anthropic",
    "ERROR_CODES": "base", "Client": "base", "CompletionRequest": "base", "CompletionResponse": "base",
    "AdaptivePolicy": "config", "CircuitPolicy": "config", "ModelPrice": "config", "Prices": "config",
    "RetryPolicy": "config", "Timeouts": "config",
    "ClientConfigError": "errors", "ClientStopped": "errors",
    "PROVIDERS": "factory", "make_client": "factory",
    "HTTPClient": "http_client",
    "read_key": "keys",
    "CostLedger": "ledger",
    "OpenAIWire": "openai_compat",
    "RunSummary": "runner", "run_requests": "runner", "until_stopped": "runner",
    "Usage": "usage",
}
"Public name -> the clients module that defines it."

__all__ = [
    "ERROR_CODES", "PROVIDERS", "AdaptivePolicy", "CircuitPolicy", "Client", "ClientConfigError", "ClientStopped",
    "CompletionRequest", "CompletionResponse", "CostLedger", "HTTPClient", "ModelPrice", "Prices", "RetryPolicy",
    "RunSummary", "Timeouts", "Usage", "make_client", "run_requests", "until_stopped",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'clients' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"clients.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
