"""Circuit breaker: fail fast while the server is failing, and stop for good on fatal errors.

closed -> open      when the failure share of the last `window` attempts reaches `error_rate`
open -> half-open   after `cooldown_s`: one probe attempt is let through
half-open -> closed on a probe success (history cleared), back to open on a probe failure
Fatal errors (bad key, permission, spend cap) halt the client: every later
request fails at once with the same code, since no retry can succeed.
"""

from __future__ import annotations

import time
from collections import deque

from clients.config import CircuitPolicy


class CircuitBreaker:
    def __init__(self, policy: CircuitPolicy):
        self.policy = policy
        self.history: deque[bool] = deque(maxlen=policy.window)  # True = failed attempt
        self.opened_at: float | None = None
        self.probing = False
        self.fatal: str | None = None
        self.times_opened = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.policy.cooldown_s else "open"

    def admit(self) -> tuple[str | None, bool]:
        """(error, probe): error is None if an attempt may be sent now, else the code to fail it with;
        probe is True for the one attempt that tests a half-open breaker (pass it back to `record`)."""
        if self.fatal is not None:
            return self.fatal, False
        state = self.state
        if state == "closed":
            return None, False
        if state == "half-open" and not self.probing:
            self.probing = True
            return None, True
        return "circuit_open", False

    def record(self, failed: bool, probe: bool = False) -> None:
        """Outcome of an admitted attempt (only server-health outcomes: see `clients.transport`)."""
        if probe:
            self.probing = False
            self.opened_at = time.monotonic() if failed else None
            if not failed:
                self.history.clear()
            return
        if self.opened_at is not None:
            return  # an attempt admitted before the breaker opened
        self.history.append(failed)
        n = len(self.history)
        if n >= self.policy.min_attempts and sum(self.history) >= self.policy.error_rate * n:
            self.opened_at = time.monotonic()
            self.times_opened += 1

    def neutral(self, probe: bool = False) -> None:
        """An admitted attempt whose outcome says nothing about server health (e.g. a 429)."""
        if probe:
            self.probing = False  # let another probe through

    def halt(self, code: str) -> None:
        self.fatal = code
