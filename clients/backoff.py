"""How long to wait before the next attempt: the server's word first, else jittered exponential backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from clients.config import RetryPolicy


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, else `retry-after` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year past what datetime holds
        return None


_REMAINING = ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-tokens-remaining",
              "anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-output-tokens-remaining",
              "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens")


def account_exhausted(headers: Mapping[str, str]) -> bool:
    """Whether a reply's rate-limit headers say a bucket of the account is empty (remaining == 0)."""
    for name in _REMAINING:
        value = headers.get(name)
        if value is not None and value.strip() in ("0", "0.0"):
            return True
    return False


def backoff_s(policy: RetryPolicy, attempt: int, rng: random.Random = random._inst) -> float:
    """Wait after failed attempt number `attempt` (1-based): base * 2^(attempt-1), capped, jittered down."""
    step = min(policy.max_delay_s, policy.base_delay_s * 2.0 ** (attempt - 1))
    return step * rng.uniform(1.0 - policy.jitter, 1.0)
