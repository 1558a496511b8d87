"""Running totals of tokens and dollars, and the `max_cost` cap.

Before a request is sent its worst-case cost (estimated input + `max_tokens`
output at list price) is *reserved*; after it returns the reservation is
released and the billed usage added. A request is admitted only while
spent + reserved + its own estimate stays within `max_cost`, so concurrent
requests cannot overshoot the cap by more than the estimate's error.
"""

from __future__ import annotations

from collections import Counter

import msgspec

from clients.usage import Usage


class LedgerTotals(msgspec.Struct, kw_only=True):
    """A snapshot of the ledger, for logs and run summaries."""

    requests: int
    "Responses recorded (successes and failures)."
    failures: dict[str, int]
    "Failed responses by error code."
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cost_usd: float
    max_cost: float | None


class CostLedger:
    """Token and dollar totals of one client; `reserve` enforces `max_cost`."""

    def __init__(self, max_cost: float | None = None):
        if max_cost is not None and max_cost < 0:
            raise ValueError(f"max_cost must be >= 0 dollars, got {max_cost}")
        self.max_cost = max_cost
        self.usage = Usage()
        self.requests = 0
        self.failures: Counter[str] = Counter()
        self.reserved = 0.0

    @property
    def spent(self) -> float:
        return self.usage.cost_usd

    def reserve(self, estimate_usd: float) -> bool:
        """Hold `estimate_usd` for a request about to be sent; False (nothing held) if it would pass max_cost."""
        if self.max_cost is not None:
            if self.spent >= self.max_cost or self.spent + self.reserved + estimate_usd > self.max_cost:
                return False
        self.reserved += estimate_usd
        return True

    def release(self, estimate_usd: float) -> None:
        self.reserved = max(0.0, self.reserved - estimate_usd)

    def record(self, usage: Usage, error: str | None = None) -> None:
        u = self.usage
        u.input_tokens += usage.input_tokens
        u.output_tokens += usage.output_tokens
        u.cache_read_input_tokens += usage.cache_read_input_tokens
        u.cache_creation_input_tokens += usage.cache_creation_input_tokens
        u.cost_usd += usage.cost_usd
        self.requests += 1
        if error is not None:
            self.failures[error] += 1

    def totals(self) -> LedgerTotals:
        u = self.usage
        return LedgerTotals(requests=self.requests, failures=dict(self.failures), input_tokens=u.input_tokens,
                            output_tokens=u.output_tokens, cache_read_input_tokens=u.cache_read_input_tokens,
                            cache_creation_input_tokens=u.cache_creation_input_tokens, cost_usd=u.cost_usd,
                            max_cost=self.max_cost)
