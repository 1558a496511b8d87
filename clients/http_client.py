"""The provider-independent request loop: budget, breaker, concurrency, attempt, retry.

One `HTTPClient` owns one aiohttp session and talks one wire format (a
`Wire`: Anthropic Messages or OpenAI chat completions). For each request:

  reserve its worst-case cost in the ledger (or fail: budget_exceeded)
  loop:
    wait while the circuit breaker is open (or fail once the client stopped)
    wait for a concurrency slot (AdaptiveLimiter)
    build the body now, from what the model is known to accept (clients.capabilities)
    POST with per-attempt timeouts; the wire turns the reply into a Verdict
    feed the verdict to the limiter (window, pauses) and the breaker (health)
    done/fail/fatal -> return; resend -> rebuild at once; retry -> sleep retry-after or backoff
  record usage and cost in the ledger
A failure while the breaker is open uses no attempt budget (the outage window
bounds it); a read timeout is resent at most `read_timeout_retries` times.
`stopped` says why the client stopped sending (run_requests raises it as
`ClientStopped` after every response is delivered); `last_error` is the last
server message, redacted.
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
from clients.keys import redact, redact_value
from clients.ledger import CostLedger
from clients.limiter import AdaptiveLimiter
from clients.verdict import Verdict

log = logging.getLogger("clients")
_encode = msgspec.json.Encoder().encode
MAX_RESENDS = 4
"Rebuilt bodies per request (one per thing learned: a dropped field, the other structured-output shape)."


class Wire(Protocol):
    """A provider's wire format: how to build the body and read the reply."""

    model: str
    url: str

    def session_headers(self) -> dict[str, str]: ...

    def body(self, request: CompletionRequest) -> dict: ...

    def interpret(self, request: CompletionRequest, status: int, headers: Mapping[str, str], raw: bytes,
                  sent: dict | None = None) -> Verdict: ...

    def estimate_usd(self, request: CompletionRequest, payload_bytes: int) -> float: ...


def scrub(response: CompletionResponse) -> CompletionResponse:
    """`response` with any piece of a key removed from its text and parsed output (a server can echo one)."""
    if response.text:
        response.text, response.parsed = redact(response.text), redact_value(response.parsed)
    return response


class HTTPClient:
    """Implements `clients.base.Client` over one wire format."""

    def __init__(self, wire: Wire, *, max_concurrent: int = 16, max_cost: float | None = None,
                 timeouts: Timeouts = Timeouts(), retry: RetryPolicy = RetryPolicy(),
                 circuit: CircuitPolicy = CircuitPolicy(), adaptive: AdaptivePolicy = AdaptivePolicy(),
                 seed: int | None = None):
        """max_concurrent, max_cost, timeouts, retry, circuit, adaptive: see clients.factory.make_client."""
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
        self.last_error = ""
        "The last failure's server message (redacted), for the run's last line."
        self._steady_limit = self.limiter.limit  # the window at the last success while the breaker was closed
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stopped(self) -> str | None:
        """Why this client stopped sending (an outage past max_outage_s, a fatal error), with the last server
        message; None while it is working."""
        reason = self.breaker.stopped
        if reason is None:
            return None
        return f"{reason}; last server error: {self.last_error}" if self.last_error else reason

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
        estimate = self.wire.estimate_usd(request, len(_encode(self.wire.body(request))))
        if not self.ledger.reserve(estimate):
            response = failed(request, self.model, "budget_exceeded", attempts=0)
        else:
            try:
                response = await self._run(session, request)
            finally:
                self.ledger.release(estimate)
        self.ledger.record(response.usage, response.error)
        return scrub(response)

    async def _run(self, session: aiohttp.ClientSession, request: CompletionRequest) -> CompletionResponse:
        attempts, failures, read_timeouts, resends, started = 0, 0, 0, 0, time.monotonic()
        while True:
            refusal, probe = await self.breaker.wait()
            if refusal is not None:
                return failed(request, self.model, refusal, attempts)
            verdict = None
            try:
                admitted = await self.limiter.acquire()
                if not probe:  # the breaker may have opened or stopped while this waited for a slot
                    refusal, probe = self.breaker.admit()
                    if refusal is not None:
                        self.limiter.release()
                        if self.breaker.fatal is not None:
                            return failed(request, self.model, refusal, attempts)
                        continue
                try:
                    body = self.wire.body(request)  # now: a drop learned while it waited applies
                    payload = _encode(body)
                    attempts += 1
                    verdict = await self._attempt(session, request, payload, body)
                    self._feedback(verdict, admitted, probe)  # before the slot goes to the next request
                finally:
                    self.limiter.release()
            finally:
                if verdict is None and probe:
                    self.breaker.neutral(probe=True)  # cancelled: let another request probe

            if verdict.kind == "done":
                verdict.response.attempts = attempts
                return verdict.response
            if verdict.kind == "resend":
                resends += 1
                if resends <= MAX_RESENDS and _encode(self.wire.body(request)) != payload:
                    continue  # the wire learned what to change: send the new body at once
                verdict.kind = "fail"  # nothing left to change: the error stands
            waited = verdict.error == "rate_limited" and verdict.retry_after is not None
            paused = verdict.health == "failed" and self.breaker.opened_at is not None
            failures += not (waited or paused)  # a wait the server asked for, or an outage, is not this item's
            read_timeouts += verdict.computing
            delay = self._retry_delay(verdict, failures, started)
            if verdict.computing and read_timeouts > self.retry.read_timeout_retries:
                delay = None  # the server may still be computing it: do not make it compute it again
            if verdict.detail:
                self.last_error = redact(verdict.detail)[:300]
            if delay is None:
                return self._give_up(request, verdict, attempts)
            log.debug("%s: attempt %d %s, retrying in %.2fs: %s", request.custom_id, attempts, verdict.error,
                      delay, self.last_error[:200])
            await asyncio.sleep(delay)

    def _give_up(self, request: CompletionRequest, verdict: Verdict, attempts: int) -> CompletionResponse:
        """The failed response for a request that will not be tried again (a fatal verdict stops the client)."""
        if verdict.kind == "fatal":
            self.breaker.halt(verdict.error, f"the server refused with {verdict.error}")
        log.warning("%s: %s after %d attempt(s)%s: %s", request.custom_id, verdict.error, attempts,
                    f" (request-id {verdict.request_id})" if verdict.request_id else "", redact(verdict.detail)[:300])
        return failed(request, self.model, verdict.error or "server_error", attempts, verdict.usage)

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
        was_open = self.breaker.opened_at is not None
        if verdict.health == "ok":
            self.breaker.record(False, probe)
            self.limiter.succeeded()
            if not was_open:
                self._steady_limit = self.limiter.limit
            elif self.breaker.opened_at is None:  # the probe closed it: the outage is over, so resume at the
                self.limiter.limit = max(self.limiter.limit, self._steady_limit)  # window before it, and
                self.limiter.slow_start = True  # grow as at the start until the next overload
        elif verdict.health == "failed":
            self.breaker.record(True, probe, verdict.retry_after)
        else:
            self.breaker.neutral(probe)
        if verdict.overload and not was_open:  # while the breaker pauses sending, overloads say nothing new
            self.limiter.overloaded(admitted)
        if verdict.kind == "retry" and verdict.error == "rate_limited":
            self.limiter.rate_limited()
            if verdict.account_limited and verdict.retry_after is not None:
                # the whole account is out of capacity: nobody gets through before retry-after. A 429 that
                # says no such thing backs off the rate (overload above) and only this request waits.
                self.limiter.pause(min(verdict.retry_after, self.retry.retry_after_cap_s))

    async def _attempt(self, session: aiohttp.ClientSession, request: CompletionRequest, payload: bytes,
                       body: dict) -> Verdict:
        t = self.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total_s, sock_connect=t.connect_s, sock_read=t.read_s)
        try:
            async with session.post(self.wire.url, data=payload, timeout=timeout,
                                    headers={"content-type": "application/json"}) as resp:
                raw = await resp.read()
                headers = resp.headers
                self.limiter.observe(headers)
                verdict = self.wire.interpret(request, resp.status, headers, raw, body)
        except aiohttp.ConnectionTimeoutError as e:
            return Verdict(kind="retry", error="timeout", health="failed",
                           detail=f"connect timeout ({type(e).__name__})")
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as e:  # sent: the server may still be working on it
            return Verdict(kind="retry", error="timeout", health="failed", computing=True,
                           detail=f"no reply within the read timeout ({type(e).__name__}; raise --read-timeout-s)")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            return Verdict(kind="retry", error="connection", health="failed", detail=f"{type(e).__name__}: {e}")
        should = headers.get("x-should-retry")
        if should == "true" and verdict.kind == "fail":
            verdict.kind = "retry"
        elif should == "false" and verdict.kind == "retry":
            verdict.kind = "fail"
        return verdict
