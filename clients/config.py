"""Client settings: retry policy, timeouts, concurrency window, circuit breaker, prices.

Every knob is a field of a small frozen dataclass with its docstring under it.
Model names and prices live here as *defaults* only; pass your own `Prices`
to `make_client` when the price list changes (it did several times in 2026).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending a failed request again."""

    max_attempts: int = 8
    """Failed attempts per request before it fails, the first included (1 turns retries off). A 429 that says
    how long to wait (retry-after) is a wait, not a failure: those are bounded by max_elapsed_s instead."""
    base_delay_s: float = 1.0
    "Backoff before the second attempt; doubles on each later attempt."
    max_delay_s: float = 60.0
    "Ceiling of the exponential backoff (before jitter)."
    jitter: float = 0.5
    "A backoff is drawn uniformly from [(1 - jitter) * d, d], so retries of many requests spread out."
    retry_after_cap_s: float = 300.0
    "Longest server-requested wait (retry-after) honoured; a longer one fails the item as rate_limited."
    retry_after_floor_s: float = 0.0
    "Smallest wait after a response that carried retry-after."
    max_elapsed_s: float = 1800.0
    "Give up on an item when the next retry would start later than this after its first attempt."
    read_timeout_retries: int = 1
    """Resends after a read timeout (the server went silent past Timeouts.read_s). The server may still be
    computing the request, so each resend can make a serial local server do the work again: 0 never resends."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"RetryPolicy.jitter must be in [0, 1], got {self.jitter}")
        if self.read_timeout_retries < 0:
            raise ValueError(f"RetryPolicy.read_timeout_retries must be >= 0, got {self.read_timeout_retries}")


@dataclass(frozen=True)
class Timeouts:
    """Per-attempt time limits (a retry gets fresh ones)."""

    connect_s: float = 10.0
    "Opening the TCP/TLS connection (not the wait for a free pooled connection)."
    read_s: float = 600.0
    """Longest silence while waiting for the response headers or between body chunks. Long by default (as
    the Anthropic SDK's 10 minutes): a non-streamed reply is silent until it is done, and a serial local
    server answers a queued request only after the ones before it."""
    total_s: float = 1800.0
    "Whole attempt, connect to last byte."


@dataclass(frozen=True)
class AdaptivePolicy:
    """How the concurrency window follows the server (see clients.limiter)."""

    initial: int = 16
    """Window at start (at most max_concurrent); slow start then doubles it every round trip up to
    max_concurrent, so a large max_concurrent is reached gradually (a sharp ramp trips acceleration limits)."""
    decrease: float = 0.5
    "Window multiplier on overload (at most once per round trip)."
    overload_window: int = 50
    "Recent replies over which the overload share is measured."
    overload_share: float = 0.2
    """Shrink only when at least this share of recent replies were overloads (529, 503, 429): a storm is a
    signal, a scattered 529 or 429 is retried (that request alone waiting) without shrinking the window."""


@dataclass(frozen=True)
class CircuitPolicy:
    """Stop sending when the server keeps failing, instead of retrying into an outage."""

    window: int = 50
    "Recent attempts whose outcome is remembered."
    min_attempts: int = 20
    "The breaker never opens on fewer remembered attempts than this."
    error_rate: float = 0.5
    "Opens when this share of remembered attempts failed (5xx, 529, timeout, dropped connection)."
    cooldown_s: float = 5.0
    """Pause after the breaker opens (at least the failing reply's retry-after); then one probe request is
    sent, and its outcome closes the breaker (every waiting request resumes) or reopens it."""
    max_cooldown_s: float = 60.0
    "Each failed probe doubles the pause, up to this."
    max_outage_s: float = 600.0
    """How long the breaker may stay open (no probe succeeding) before the client stops: every request still
    waiting then fails as circuit_open (not sent; a rerun sends it) and `HTTPClient.stopped` says why."""


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million tokens for one model, standard (non-batch) tier."""

    input: float
    "Uncached input tokens."
    output: float
    "Output tokens, thinking included."
    cache_write_5m: float | None = None
    "Input written to the 5-minute cache; None = 1.25 x input."
    cache_write_1h: float | None = None
    "Input written to the 1-hour cache; None = 2 x input."
    cache_read: float | None = None
    "Input read from the cache; None = 0.1 x input."

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write_5m: int = 0,
             cache_write_1h: int = 0, batch: bool = False, batch_discount: float = 0.5) -> float:
        w5 = self.input * 1.25 if self.cache_write_5m is None else self.cache_write_5m
        w1 = self.input * 2.0 if self.cache_write_1h is None else self.cache_write_1h
        rd = self.input * 0.1 if self.cache_read is None else self.cache_read
        usd = (input_tokens * self.input + output_tokens * self.output + cache_read * rd
               + cache_write_5m * w5 + cache_write_1h * w1) / 1e6
        return usd * (batch_discount if batch else 1.0)


def _default_table() -> dict[str, ModelPrice]:
    # Anthropic list prices, $/MTok, as published in late 2026 (cache columns default to the standard
    # multipliers; Haiku 5.5's cache prices are third-party figures). Check the live pricing page.
    return {
        "claude-haiku-4-5": ModelPrice(1.0, 5.0),
        "claude-sonnet-4-5": ModelPrice(3.0, 15.0),
        "claude-haiku-5-5": ModelPrice(0.10, 0.50, cache_write_5m=0.125, cache_write_1h=0.20, cache_read=0.01),
        "claude-sonnet-5-5": ModelPrice(2.0, 10.0),
    }


@dataclass(frozen=True)
class Prices:
    """Price table used by the cost ledger."""

    models: dict[str, ModelPrice] = field(default_factory=_default_table)
    "Model id (or alias: a dated id like claude-haiku-4-5-20251001 matches claude-haiku-4-5) -> price."
    batch_discount: float = 0.5
    "Multiplier for Message Batches and service_tier == 'batch' (50 % off everything)."

    def lookup(self, model: str) -> ModelPrice | None:
        """Exact id first, then the longest table key that the id starts with (dated ids, vendor/ prefixes)."""
        if model in self.models:
            return self.models[model]
        bare = model.split("/", 1)[1] if "/" in model else model  # openrouter: anthropic/claude-...
        hits = [k for k in self.models if bare == k or bare.startswith(k + "-") or bare.startswith(k + "@")]
        return self.models[max(hits, key=len)] if hits else None
