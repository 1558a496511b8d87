"""The provider-independent request loop: budget, breaker, concurrency, attempt, retry.

One `HTTPClient` owns one aiohttp session and talks one wire format (a
`Wire`: Anthropic Messages or OpenAI chat completions). For each request:

  reserve its worst-case cost in the ledger (or fail: budget_exceeded)
  loop:
    wait for a concurrency slot (AdaptiveLimiter)
    ask the circuit breaker (or fail: circuit_open / the fatal code)
    POST with per-attempt timeouts; the wire turns the reply into a Verdict
    feed the verdict to the limiter (window, pauses) and the breaker (health)
    done/fail/fatal -> return; retry -> sleep retry-after or backoff (slot released)
  record usage and cost in the ledger
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from typing import Protocol

import aiohttp
import msgspec

from clients.backoff import backoff_s
from clients.base import CompletionRequest, CompletionResponse, failed
from clients.breaker import CircuitBreaker
from clients.config import AdaptivePolicy, CircuitPolicy, RetryPolicy, Timeouts
from clients.keys import redact
from clients.ledger import CostLedger
from clients.limiter import AdaptiveLimiter
from clients.verdict import Verdict

log = logging.getLogger("clients")
_encode = msgspec.json.Encoder().encode


class Wire(Protocol):
    """A provider's wire format: how to build the body and read the reply."""

    model: str
    url: str

    def session_headers(self) -> dict[str, str]: ...

    def body(self, request: CompletionRequest) -> dict: ...

    def interpret(self, request: CompletionRequest, status: int, headers: Mapping[str, str], raw: bytes) -> Verdict: ...

    def estimate_usd(self, request: CompletionRequest, payload_bytes: int) -> float: ...


class HTTPClient:
    """Implements `clients.base.Client` over one wire format."""

    def __init__(self, wire: Wire, *, max_concurrent: int = 16, max_cost: float | None = None,
                 timeouts: Timeouts = Timeouts(), retry: RetryPolicy = RetryPolicy(),
                 circuit: CircuitPolicy = CircuitPolicy(), adaptive: AdaptivePolicy = AdaptivePolicy(),
                 seed: int | None = None):
        self.wire = wire
        self.model = wire.model
        self.max_concurrent = max_concurrent
        self.timeouts = timeouts
        self.retry = retry
        self.ledger = CostLedger(max_cost)
        self.breaker = CircuitBreaker(circuit)
        self.adaptive = adaptive
        self.limiter = AdaptiveLimiter(max_concurrent, adaptive)
        self.rng = random.Random(seed)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ session

    def session(self) -> aiohttp.ClientSession:
        """One session per event loop (a client reused under a second asyncio.run gets a fresh one)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            if self._loop is not None and self._loop is not loop:
                limit = self.limiter.limit
                self.limiter = AdaptiveLimiter(self.max_concurrent, self.adaptive)
                self.limiter.limit, self.limiter.slow_start = limit, False
            connector = aiohttp.TCPConnector(limit=self.max_concurrent + 4, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, headers=self.wire.session_headers())
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None

    # ------------------------------------------------------------------ one request

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        session = self.session()
        payload = _encode(self.wire.body(request))
        estimate = self.wire.estimate_usd(request, len(payload))
        if not self.ledger.reserve(estimate):
            response = failed(request, self.model, "budget_exceeded", attempts=0)
        else:
            try:
                response = await self._run(session, request, payload)
            finally:
                self.ledger.release(estimate)
        self.ledger.record(response.usage, response.error)
        return response

    async def _run(self, session: aiohttp.ClientSession, request: CompletionRequest,
                   payload: bytes) -> CompletionResponse:
        attempts, failures, started, resent = 0, 0, time.monotonic(), False
        while True:
            admitted = await self.limiter.acquire()
            try:
                refusal, probe = self.breaker.admit()
                if refusal is not None:
                    return failed(request, self.model, refusal, attempts)
                attempts += 1
                verdict = await self._attempt(session, request, payload)
            finally:
                self.limiter.release()
            self._feedback(verdict, admitted, probe)

            if verdict.kind == "done":
                verdict.response.attempts = attempts
                return verdict.response
            if verdict.kind == "resend":
                if not resent:
                    resent, payload = True, _encode(self.wire.body(request))
                    continue
                verdict.kind = "fail"  # rebuilt once already: the error stands
            waited = verdict.error == "rate_limited" and verdict.retry_after is not None
            failures += not waited  # a wait the server asked for is not a failure
            delay = self._retry_delay(verdict, failures, started)
            if delay is None:
                if verdict.kind == "fatal":
                    self.breaker.halt(verdict.error)
                log.warning("%s: %s after %d attempt(s)%s: %s", request.custom_id, verdict.error, attempts,
                            f" (request-id {verdict.request_id})" if verdict.request_id else "",
                            redact(verdict.detail)[:300])
                return failed(request, self.model, verdict.error or "server_error", attempts, verdict.usage)
            log.debug("%s: attempt %d %s, retrying in %.2fs: %s", request.custom_id, attempts, verdict.error,
                      delay, redact(verdict.detail)[:200])
            await asyncio.sleep(delay)

    def _retry_delay(self, verdict: Verdict, failures: int, started: float) -> float | None:
        """Seconds to wait before the next attempt, or None to stop here."""
        if verdict.kind != "retry" or failures >= self.retry.max_attempts:
            return None
        if verdict.retry_after is not None:
            if verdict.retry_after > self.retry.retry_after_cap_s:
                return None
            delay = max(verdict.retry_after, self.retry.retry_after_floor_s)
        else:
            delay = backoff_s(self.retry, max(1, failures), self.rng)
        if time.monotonic() + delay - started > self.retry.max_elapsed_s:
            return None
        return delay

    def _feedback(self, verdict: Verdict, admitted: float, probe: bool) -> None:
        if verdict.health == "ok":
            self.breaker.record(False, probe)
            self.limiter.succeeded()
        elif verdict.health == "failed":
            self.breaker.record(True, probe)
        else:
            self.breaker.neutral(probe)
        if verdict.overload:
            self.limiter.overloaded(admitted)
        if verdict.kind == "retry" and verdict.error == "rate_limited":
            self.limiter.rate_limited()
        if verdict.kind == "retry" and verdict.retry_after is not None:
            self.limiter.pause(min(verdict.retry_after, self.retry.retry_after_cap_s))

    async def _attempt(self, session: aiohttp.ClientSession, request: CompletionRequest, payload: bytes) -> Verdict:
        t = self.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total_s, sock_connect=t.connect_s, sock_read=t.read_s)
        try:
            async with session.post(self.wire.url, data=payload, timeout=timeout,
                                    headers={"content-type": "application/json"}) as resp:
                raw = await resp.read()
                headers = resp.headers
                self.limiter.observe(headers)
                verdict = self.wire.interpret(request, resp.status, headers, raw)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as e:
            return Verdict(kind="retry", error="timeout", health="failed", detail=type(e).__name__)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            return Verdict(kind="retry", error="connection", health="failed", detail=f"{type(e).__name__}: {e}")
        should = headers.get("x-should-retry")
        if should == "true" and verdict.kind == "fail":
            verdict.kind = "retry"
        elif should == "false" and verdict.kind == "retry":
            verdict.kind = "fail"
        return verdict
