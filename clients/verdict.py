"""What a wire format concludes from one HTTP exchange, and what the retry loop does with it.

kind:
  done    a CompletionResponse, usable or a classified result error (refusal, truncated, ...)
  retry   transient: try again after `retry_after` or a backoff
  fail    final for this item (400, 413, non-retryable provider error)
  fatal   final for every item: the client halts (bad key, permission, unknown model or route, spend cap)
  resend  the request must be rebuilt and sent again at once (the wire changed its body format)
health feeds the circuit breaker (ok / failed / neutral), overload the concurrency window.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from clients.base import CompletionResponse
from clients.usage import Usage


class Verdict(msgspec.Struct, kw_only=True):
    kind: Literal["done", "retry", "fail", "fatal", "resend"]
    response: CompletionResponse | None = None
    "Set when kind == 'done'."
    error: str | None = None
    "Error code (clients.base.ERROR_CODES) for retry/fail/fatal."
    retry_after: float | None = None
    "Seconds the server asked to wait (retry-after / retry-after-ms)."
    health: Literal["ok", "failed", "neutral"] = "ok"
    overload: bool = False
    "An overload signal for the concurrency window (529, 503, 429)."
    usage: Usage | None = None
    "Billed usage of a failed exchange, if the provider reported any."
    detail: str = ""
    "Server message for the log (redacted before logging)."
    request_id: str = ""
    computing: bool = False
    "A read timeout: the request was sent and the server may still be computing it."
    account_limited: bool = False
    "A 429 whose rate-limit headers say the account's bucket is empty: every request must wait, not just this one."


def http_verdict(status: int, retry_after: float | None, detail: str, request_id: str,
                 account_limited: bool = False) -> Verdict:
    """Default reading of a non-200 status, shared by both wires (they special-case 400/402/429 first).

    A 429 is an overload signal for the concurrency window (which shrinks only when they are a real share of
    recent replies); the limiter pauses every request only when `account_limited`."""
    common = dict(retry_after=retry_after, detail=detail, request_id=request_id)
    if status in (401, 403, 404):  # bad key, no permission, unknown model or route: no request can succeed
        return Verdict(kind="fatal", error=f"http_{status}", health="neutral", **common)
    if status == 429:
        return Verdict(kind="retry", error="rate_limited", health="neutral", overload=True,
                       account_limited=account_limited, **common)
    if status == 408:
        return Verdict(kind="retry", error="timeout", health="failed", **common)
    if status == 409:
        return Verdict(kind="retry", error="server_error", health="neutral", **common)
    if status == 529:
        return Verdict(kind="retry", error="overloaded", health="failed", overload=True, **common)
    if status >= 500:
        return Verdict(kind="retry", error="server_error", health="failed", overload=status == 503, **common)
    return Verdict(kind="fail", error=f"http_{status}", health="neutral", **common)
