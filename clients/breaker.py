"""Circuit breaker: pause sending while the server is failing, resume when a probe succeeds.

closed -> open      when the failure share of the last `window` attempts reaches `error_rate`
open                nothing is sent: requests wait (`wait`) for `cooldown_s`, or longer if the
                    failing reply said retry-after; their retries use no attempt budget meanwhile
open -> half-open   after the pause: exactly one waiting request is sent as a probe
half-open -> closed on a probe success (history cleared): every waiting request resumes
half-open -> open   on a probe failure, with the pause doubled (up to `max_cooldown_s`)
An outage (open, no probe succeeding) longer than `max_outage_s` stops the
client: waiting and later requests fail as circuit_open and `stopped` holds
the reason. Fatal errors (bad key, permission, spend cap) stop it at once:
every later request fails with the same code, since no retry can succeed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from clients.config import CircuitPolicy


class CircuitBreaker:
    def __init__(self, policy: CircuitPolicy):
        self.policy = policy
        self.history: deque[bool] = deque(maxlen=policy.window)  # True = failed attempt
        self.opened_at: float | None = None
        "When the current pause began (None = closed)."
        self.pause_s = policy.cooldown_s
        self.outage_since: float | None = None
        self.probing = False
        self.fatal: str | None = None
        self.stopped: str | None = None
        "Why the client stopped sending (outage or fatal error), for the run's last line."
        self.times_opened = 0
        self._waiters: list[asyncio.Future] = []

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.pause_s else "open"

    def admit(self) -> tuple[str | None, bool]:
        """(error, probe) now, without waiting: error is None if an attempt may be sent, else the code to
        fail it with ('circuit_open' while paused); probe is True for the one attempt that tests a
        half-open breaker (pass it back to `record`)."""
        if self.fatal is not None:
            return self.fatal, False
        if self.opened_at is None:
            return None, False
        now = time.monotonic()
        if now - self.outage_since >= self.policy.max_outage_s:
            self._stop(f"the server kept failing for {now - self.outage_since:.0f} s (breaker open, every probe "
                       "failed)", "circuit_open")
            return self.fatal, False
        if self.state == "half-open" and not self.probing:
            self.probing = True
            return None, True
        return "circuit_open", False

    async def wait(self) -> tuple[str | None, bool]:
        """Like `admit`, but while the breaker is open wait for it to close (or for this request's turn to
        probe) instead of failing; an error comes back only once the client has stopped."""
        while True:
            error, probe = self.admit()
            if error != "circuit_open" or self.fatal is not None:
                return error, probe
            now = time.monotonic()
            until = self.opened_at + self.pause_s if not self.probing else self.outage_since + self.policy.max_outage_s
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, timeout=max(0.001, min(until, self.outage_since
                                                                   + self.policy.max_outage_s) - now))
            except asyncio.TimeoutError:
                pass
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    def record(self, failed: bool, probe: bool = False, retry_after: float | None = None) -> None:
        """Outcome of an admitted attempt (only server-health outcomes: see `clients.verdict`)."""
        if probe:
            self.probing = False
            if failed:
                self.pause_s = min(self.policy.max_cooldown_s, self.pause_s * 2)
                self._open(retry_after)
            else:
                self.opened_at = self.outage_since = None
                self.pause_s = self.policy.cooldown_s
                self.history.clear()
            self._notify()
            return
        if self.opened_at is not None:
            if failed and retry_after:  # honour the longest wait the server asked for
                self._open(retry_after, keep_start=True)
            return  # an attempt admitted before the breaker opened
        self.history.append(failed)
        n = len(self.history)
        if n >= self.policy.min_attempts and sum(self.history) >= self.policy.error_rate * n:
            self.outage_since = time.monotonic()
            self.times_opened += 1
            self._open(retry_after)

    def _open(self, retry_after: float | None, keep_start: bool = False) -> None:
        now = time.monotonic()
        if keep_start and self.opened_at is not None:
            self.pause_s = max(self.pause_s, now + (retry_after or 0.0) - self.opened_at)
            return
        self.opened_at = now
        self.pause_s = max(self.pause_s, retry_after or 0.0)

    def neutral(self, probe: bool = False) -> None:
        """An admitted attempt whose outcome says nothing about server health (e.g. a 429), or a probe that
        never finished: let another probe through."""
        if probe:
            self.probing = False
            self._notify()

    def halt(self, code: str, reason: str = "") -> None:
        """Stop the client for good: every later request fails with `code`."""
        self._stop(reason or f"the server refused with {code}", code)

    def _stop(self, reason: str, code: str) -> None:
        self.fatal = code
        self.stopped = self.stopped or reason
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
