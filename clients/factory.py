"""`make_client`: the client for a provider name, with its endpoint, key and wire format filled in.

`PROVIDERS` lists the providers it knows, each with its default base URL, the
environment variable its key is read from and whether that key is required.
"""

from __future__ import annotations

from pathlib import Path

from clients.anthropic import AnthropicWire
from clients.capabilities import CapabilityStore
from clients.config import AdaptivePolicy, CircuitPolicy, Prices, RetryPolicy, Timeouts
from clients.errors import ClientConfigError
from clients.http_client import HTTPClient
from clients.keys import read_key
from clients.openai_compat import OpenAIWire

PROVIDERS = {
    # provider: (default base_url, default key env var, key required)
    "anthropic": ("https://api.anthropic.com", "ANTHROPIC_API_KEY", True),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", True),
    "openai-compatible": (None, "OPENAI_API_KEY", False),
}


def make_client(provider: str, model: str, *, base_url: str | None = None, api_key_env: str | None = None,
                max_concurrent: int = 16, max_cost: float | None = None, prices: Prices | None = None,
                timeouts: Timeouts = Timeouts(), retry: RetryPolicy = RetryPolicy(),
                circuit: CircuitPolicy = CircuitPolicy(), adaptive: AdaptivePolicy = AdaptivePolicy(),
                cache_ttl: str = "5m", state_dir: str | Path | None = None) -> HTTPClient:
    """A client for `provider` ('anthropic' | 'openrouter' | 'openai-compatible') and `model`.

    base_url: API root; defaults to the provider's public endpoint. For 'openai-compatible' it is
      required and is the root that `/chat/completions` is appended to (a bare `http://host:port`
      gets `/v1`), e.g. http://127.0.0.1:8000/v1 for vLLM.
    api_key_env: environment variable holding the key (default ANTHROPIC_API_KEY, OPENROUTER_API_KEY,
      OPENAI_API_KEY). A local openai-compatible server may run without a key, unless you name one here.
    max_cost: dollar cap for this client; requests that could pass it fail with 'budget_exceeded'.
    timeouts, retry, circuit, adaptive: see clients.config (per-attempt limits, backoff, breaker, concurrency window).
    cache_ttl: Anthropic prompt-cache lifetime, '5m' or '1h' (use '1h' for long runs and batches).
    state_dir: folder (the run folder) where what the client learns about the model is kept
      (`capabilities.json`: fields it rejects, the structured-output shape it takes); None keeps it in memory.
    """
    if provider not in PROVIDERS:
        raise ClientConfigError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    if max_concurrent < 1:
        raise ClientConfigError(f"max_concurrent must be >= 1, got {max_concurrent}")
    default_url, default_env, required = PROVIDERS[provider]
    url = base_url or default_url
    if url is None:
        raise ClientConfigError("provider 'openai-compatible' needs base_url, e.g. http://127.0.0.1:8000/v1 (vLLM) "
                                "or http://127.0.0.1:8080/v1 (llama.cpp)")
    key = read_key(api_key_env or default_env, required=required or api_key_env is not None)
    prices = prices or Prices()
    caps = CapabilityStore(model, state_dir)
    if provider == "anthropic":
        wire = AnthropicWire(model, url, key, prices, cache_ttl=cache_ttl, caps=caps)
        if max_cost is not None and wire.price is None:
            raise ClientConfigError(f"no price for model {model!r}, so max_cost cannot be enforced: pass "
                                    f"prices=Prices(models={{{model!r}: ModelPrice(input=..., output=...)}})")
    else:
        if provider == "openai-compatible" and url.rstrip("/").count("/") == 2:  # scheme://host[:port] only
            url = url.rstrip("/") + "/v1"
        wire = OpenAIWire(model, url, key, prices, openrouter=provider == "openrouter", caps=caps)
    return HTTPClient(wire, max_concurrent=max_concurrent, max_cost=max_cost, timeouts=timeouts, retry=retry,
                      circuit=circuit, adaptive=adaptive)
