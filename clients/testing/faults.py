"""Scripted misbehaviour for the fake provider server: `Fault`, and `fault_mix` for random failures.

A `Fault` names what goes wrong (an HTTP status, a stall, a dropped socket, a
refusal, a broken batch item, ...), how often and for which requests; the
server hands each incoming request the first live fault that matches it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

CONTENT_FAULTS = {"refusal", "max_tokens", "truncate", "wrong_schema", "bad_json", "raw_newlines"}
BATCH_FAULTS = {"batch_errored", "batch_canceled", "batch_expired", "batch_missing"}


@dataclass
class Fault:
    """One scripted misbehaviour. A request takes the first fault whose `match` it contains and
    whose `times` is not used up (then with chance `probability`)."""

    kind: str
    """HTTP: status | spend_limit | credits | in_flight_budget | error_200 | stall | drop | disconnect;
    content: refusal | max_tokens | truncate | wrong_schema | bad_json | raw_newlines (escaped newlines in
    the reply's JSON strings sent raw, as a grammar-constrained local server does); batch items: batch_errored |
    batch_canceled | batch_expired | batch_missing (no result line). status, drop and disconnect also
    apply to batch creation (drop: the batch is made, the reply lost)."""
    status: int = 500
    "HTTP status for kind='status'."
    retry_after: float | None = None
    "Value of the retry-after header (seconds), if any."
    times: int = 1
    "Requests this fault applies to; 0 = unlimited."
    match: str = ""
    "Apply only to requests whose JSON text contains this string ('' = all)."
    probability: float = 1.0
    "Chance that a matching request gets the fault (seeded)."
    seconds: float = 5.0
    "Stall length for kind='stall'."
    after_headers: bool = False
    "Stall after sending the headers (else before)."
    error_type: str = "provider_overloaded"
    "OpenRouter error.metadata.error_type for kind='error_200'."
    message: str = ""
    "Error message for kind='status' (default 'scripted <status>')."
    headers: dict[str, str] = field(default_factory=dict)
    "Extra reply headers for kind='status' (e.g. a rate-limit bucket reading 0)."
    period_s: float = 0.0
    "With on_s: the fault is live only during the first on_s seconds of every period_s (a storm), from its first use."
    on_s: float = 0.0
    used: int = field(default=0, init=False)
    _t0: float | None = field(default=None, init=False, repr=False)

    def live(self) -> bool:
        """Inside its storm window (always, for a fault without one)."""
        if not self.period_s:
            return True
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        return (now - self._t0) % self.period_s < self.on_s

    @classmethod
    def http(cls, status: int, retry_after: float | None = None, **kw: Any) -> Fault:
        return cls("status", status=status, retry_after=retry_after, **kw)

    @classmethod
    def stall(cls, seconds: float, after_headers: bool = False, **kw: Any) -> Fault:
        return cls("stall", seconds=seconds, after_headers=after_headers, **kw)

    @classmethod
    def storm(cls, status: int = 529, period_s: float = 12.0, on_s: float = 5.0, **kw: Any) -> Fault:
        """Every request gets `status` during the first `on_s` seconds of each `period_s` (from the first request)."""
        return cls("status", status=status, times=0, period_s=period_s, on_s=on_s, **kw)

    @classmethod
    def of(cls, kind: str, **kw: Any) -> Fault:
        return cls(kind, **kw)


def fault_mix(rate: float, retry_after: float = 0.05) -> list[Fault]:
    """Unlimited random faults, `rate` of requests in all: 429, 500, 529, 503, 504, dropped socket."""
    kinds = [Fault.http(429, retry_after=retry_after), Fault.http(500), Fault.http(529), Fault.http(503),
             Fault.http(504), Fault.of("drop")]
    p = 1.0 - (1.0 - rate) ** (1.0 / len(kinds))  # so that P(any fault) = rate
    for f in kinds:
        f.times, f.probability = 0, p
    return kinds
