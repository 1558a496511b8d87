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
NOT_SENT = {"budget_exceeded", "circuit_open", "http_401", "http_403", "spend_limit", "http_404", "unsupported_request"}
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
    read_timeout_s: float = 600.0
    """Seconds without a byte of the reply before the attempt ends (a reply is silent until it is done; a serial
    local server answers a queued request only after the ones before it)."""
    read_timeout_retries: int = 1
    """Resends after a read timeout; the server may still be computing the request, so 0 for a serial local
    server (a resend makes it compute the request again)."""
    max_attempts: int = 8
    "Failed attempts per request before it fails (the retry budget; waits the server asks for and outages excluded)."
    breaker_cooldown_s: float = 5.0
    "Pause after the circuit breaker opens (or the server's retry-after), doubled after each failed probe."
    breaker_window_s: float = 600.0
    """How long the server may keep failing (breaker open, every probe failing) before the run stops with a
    one-line summary and exit status 2; until then requests wait and resume."""

    @property
    def uses_llm(self) -> bool:
        return self.provider not in ("", "search")

    def make_client(self, cache_ttl: str = "5m", state_dir=None):
        """An HTTPClient for these settings (raises clients.errors.ClientConfigError on a bad setup); `state_dir`
        (the run folder) keeps what it learns about the model (clients.capabilities) for the next run."""
        from clients import make_client
        from clients.config import CircuitPolicy, RetryPolicy, Timeouts
        from clients.errors import ClientConfigError

        for flag, value in (("--breaker-cooldown-s", self.breaker_cooldown_s), ("--breaker-window-s",
                            self.breaker_window_s), ("--read-timeout-s", self.read_timeout_s),
                            ("--connect-timeout-s", self.connect_timeout_s)):
            if value <= 0:
                raise ClientConfigError(f"{flag} must be > 0 seconds, got {value}")
        if self.max_attempts < 1 or self.read_timeout_retries < 0:
            raise ClientConfigError(f"--max-attempts must be >= 1 and --read-timeout-retries >= 0, got "
                                    f"{self.max_attempts} and {self.read_timeout_retries}")
        retry = RetryPolicy(max_attempts=self.max_attempts, read_timeout_retries=self.read_timeout_retries)
        circuit = CircuitPolicy(cooldown_s=self.breaker_cooldown_s,
                                max_cooldown_s=max(self.breaker_cooldown_s, CircuitPolicy.max_cooldown_s),
                                max_outage_s=self.breaker_window_s)
        return make_client(self.provider, self.model, base_url=self.base_url, api_key_env=self.api_key_env,
                           max_concurrent=self.max_concurrent, max_cost=self.max_cost, cache_ttl=cache_ttl,
                           timeouts=Timeouts(connect_s=self.connect_timeout_s, read_s=self.read_timeout_s,
                                             total_s=max(Timeouts.total_s, self.read_timeout_s)),
                           retry=retry, circuit=circuit, state_dir=state_dir)
