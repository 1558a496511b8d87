"""Admission control: how many requests may be in flight, and when none may start.

An AIMD window in the style of TCP congestion control:
  * slow start: the window begins small (the docs warn that a sharp ramp-up
    trips acceleration limits) and grows by one per success, i.e. doubles
    per round trip, until the first overload;
  * after that, additive increase: +1/window per success (+1 per round trip);
  * multiplicative decrease on overload (529, 503, 429)
    once overloads are a real share of recent replies (an isolated 529 is
    noise, a storm is a signal), at most once per round trip: only a request
    sent after the last decrease can trigger the next one.
Rate limits are handled by pacing and pausing, not by shrinking the window:
  * the `anthropic-ratelimit-requests-*` headers of each reply give the
    server's refill rate, (limit - remaining) / seconds-to-full-reset; the
    limiter keeps a mirror of that request bucket (set to `remaining` by
    each reply, emptied by a 429, refilled at that rate, one token spent per
    admission) and admits only while it holds a token. Far from the limit
    this changes nothing; near it, requests are spaced at the refill rate
    instead of bursting into 429s, and capacity freed by a hiccup is used;
  * a 429 with retry-after whose rate-limit headers show an empty bucket
    (the account is limited), or a reply whose token family (input/output
    tokens) reads 0, stops every new admission until capacity is back; any
    other 429 makes only its own request wait, and counts as an overload.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime

from clients.config import AdaptivePolicy

TOKEN_FAMILIES = ("tokens", "input-tokens", "output-tokens")
"anthropic-ratelimit-<family>-* token buckets; their `remaining` is rounded to the nearest 1000."


class AdaptiveLimiter:
    """At most `limit` requests in flight (1 <= limit <= max_concurrent), FIFO, none while paused."""

    def __init__(self, max_concurrent: int, policy: AdaptivePolicy = AdaptivePolicy()):
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.max_concurrent = max_concurrent
        self.policy = policy
        self.limit = float(max(1, min(policy.initial, max_concurrent)))
        self.slow_start = True
        self.recent: deque[bool] = deque(maxlen=policy.overload_window)  # True = overload
        self.in_flight = 0
        self.paused_until = 0.0
        self.bucket: float | None = None  # mirror of the server's request bucket; None = not pacing
        self.bucket_cap = 0.0
        self.refill = 0.0  # its refill rate, requests/s
        self.bucket_at = 0.0
        self._last_decrease = float("-inf")
        self._waiters: deque[asyncio.Future] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # ------------------------------------------------------------------ admission

    def _tokens(self, now: float) -> float:
        return min(self.bucket + (now - self.bucket_at) * self.refill, self.bucket_cap)

    def _ready_at(self) -> float:
        """When the next admission may start, as far as pauses and pacing go."""
        if self.bucket is None:
            return self.paused_until
        now = time.monotonic()
        return max(self.paused_until, now + max(0.0, 1.0 - self._tokens(now)) / self.refill)

    def _free(self) -> bool:
        return time.monotonic() >= self._ready_at() and self.in_flight < int(self.limit)

    def _grant(self) -> float:
        now = time.monotonic()
        self.in_flight += 1
        if self.bucket is not None:
            self.bucket, self.bucket_at = self._tokens(now) - 1.0, now
        return now

    async def acquire(self) -> float:
        """Wait for a slot; returns the admission time (pass it to `overloaded`)."""
        if not self._waiters and self._free():
            return self._grant()
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            else:
                self._waiters.remove(fut)
            raise
        return time.monotonic()

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        """Hand free slots to waiters in order; if pacing or a pause holds them back, wake up when it ends."""
        while self._waiters:
            if self.in_flight >= int(self.limit):
                return  # a release will call again
            delay = self._ready_at() - time.monotonic()
            if delay > 0:
                self._arm_timer(delay)
                return
            fut = self._waiters.popleft()
            if not fut.done():
                self._grant()
                fut.set_result(None)

    def _arm_timer(self, delay: float) -> None:
        at = time.monotonic() + delay
        if self._timer is not None:
            if self._timer_at <= at:
                return  # an earlier wake-up is armed; it re-arms if still too early
            self._timer.cancel()

        def fire() -> None:
            self._timer = None
            self._wake()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(delay, fire)

    # ------------------------------------------------------------------ feedback

    def succeeded(self) -> None:
        self.recent.append(False)
        self.limit = min(float(self.max_concurrent), self.limit + (1.0 if self.slow_start else 1.0 / self.limit))
        self._wake()

    def overloaded(self, admitted_at: float) -> None:
        """Multiplicative decrease when overloads are frequent, once per round trip."""
        self.recent.append(True)
        if sum(self.recent) < max(2.0, self.policy.overload_share * len(self.recent)):
            return
        self.slow_start = False
        if admitted_at > self._last_decrease:
            self.limit = max(1.0, self.limit * self.policy.decrease)
            self._last_decrease = time.monotonic()

    def pause(self, seconds: float) -> None:
        """No new admissions for `seconds` (requests already in flight continue)."""
        if seconds > 0:
            self.paused_until = max(self.paused_until, time.monotonic() + seconds)
            self._wake()

    def rate_limited(self) -> None:
        """A 429 from the rate limiter: the server's bucket is empty now."""
        if self.bucket is not None:
            self.bucket, self.bucket_at = 0.0, time.monotonic()

    def observe(self, headers: Mapping[str, str]) -> None:
        """Follow the `anthropic-ratelimit-*` headers of a reply: mirror the request bucket, and pause when a
        token bucket reads 0 (for the time it takes to refill 1000 tokens)."""
        bucket = _bucket(headers, "requests")
        if bucket is not None:
            remaining, limit, refill = bucket
            self.refill = refill or self.refill  # a full bucket says nothing about the rate
            if self.refill:  # `remaining` is rounded down: +0.5 is the expected unseen fraction
                self.bucket, self.bucket_at, self.bucket_cap = remaining + 0.5, time.monotonic(), limit
                self._wake()
        for family in TOKEN_FAMILIES:
            bucket = _bucket(headers, family)
            if bucket is not None and bucket[0] == 0 and bucket[2]:
                self.pause(1000.0 / bucket[2])


def _bucket(headers: Mapping[str, str], family: str) -> tuple[float, float, float | None] | None:
    """(remaining, limit, refill per second or None) from `anthropic-ratelimit-<family>-*`, or None if absent."""
    remaining = _number(headers.get(f"anthropic-ratelimit-{family}-remaining", ""))
    limit = _number(headers.get(f"anthropic-ratelimit-{family}-limit", ""))
    if remaining is None or not limit:
        return None
    reset_in = seconds_until(headers.get(f"anthropic-ratelimit-{family}-reset", ""))
    refill = (limit - remaining) / reset_in if reset_in and remaining < limit else None
    return remaining, limit, refill


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def seconds_until(rfc3339: str) -> float | None:
    """Seconds from now to an RFC 3339 time (anthropic-ratelimit-*-reset), or None if unparsable."""
    try:
        when = datetime.fromisoformat(rfc3339.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())
