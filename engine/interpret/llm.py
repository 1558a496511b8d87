"""The LLM flags every command shares (interpret, score, label), and the one place a client is made.

    @dataclass(frozen=True)
    class InterpretConfig(ClientArgs): ...       # --provider --model --base-url ... come from here
    client = cfg.make_client()
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.cli import cli

PROVIDERS = ("search", "anthropic", "openrouter", "openai-compatible")
"search = no LLM (offline keyword labels; only offline scorers)."
NOT_SENT = {"budget_exceeded", "circuit_open", "http_401", "http_403", "spend_limit", "http_404"}
"Failures that say nothing about the latent (nothing sent, or the whole client is unusable): not logged."


@dataclass(frozen=True)
class ClientArgs:
    """Which LLM to ask and how hard to push it."""

    provider: str = cli("search", choices=PROVIDERS, aliases=("--explainer_provider",))
    "search (offline, no LLM) | anthropic | openrouter | openai-compatible (vLLM, llama.cpp, ...)."
    model: str = cli("", aliases=("--explainer_model",))
    "LLM id, e.g. claude-haiku-4-5 (not needed for search)."
    base_url: str | None = None
    "API root; openai-compatible needs it, e.g. http://127.0.0.1:8000/v1."
    api_key_env: str | None = None
    "Environment variable holding the API key (default per provider: ANTHROPIC_API_KEY, OPENROUTER_API_KEY, OPENAI_API_KEY)."
    max_concurrent: int = 16
    "Requests in flight at most (the client lowers it on rate limits and overload)."
    max_cost: float | None = None
    "Dollar cap for this run; requests that could pass it are not sent."
    connect_timeout_s: float = 10.0
    "Seconds to open a connection, per attempt."
    read_timeout_s: float = 120.0
    "Seconds without a byte of the reply before the attempt is retried."

    @property
    def uses_llm(self) -> bool:
        return self.provider not in ("", "search")

    def make_client(self, cache_ttl: str = "5m"):
        """An HTTPClient for these settings (raises clients.errors.ClientConfigError on a bad setup)."""
        from clients import make_client
        from clients.config import Timeouts

        return make_client(self.provider, self.model, base_url=self.base_url, api_key_env=self.api_key_env,
                           max_concurrent=self.max_concurrent, max_cost=self.max_cost, cache_ttl=cache_ttl,
                           timeouts=Timeouts(connect_s=self.connect_timeout_s, read_s=self.read_timeout_s))
