"""The client's parts on their own: schema check, backoff, limiter, breaker, ledger."""

import asyncio
import random
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Literal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.backoff import backoff_s, retry_after_s
from clients.breaker import CircuitBreaker
from clients.config import AdaptivePolicy, CircuitPolicy, RetryPolicy
from clients.ledger import CostLedger
from clients.limiter import AdaptiveLimiter
from clients.structured import decode_output, provider_schema, schema_errors
from clients.testing import example_for_schema
from clients.usage import Usage
from engine.core.schemas import ExplanationOutput


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    score: float


class Out(msgspec.Struct, forbid_unknown_fields=True):
    label: str
    confidence: Literal["low", "medium", "high"]
    tags: list[str]
    inner: Inner
    note: str | None


OUT_SCHEMA = provider_schema(Out)

# ---------------------------------------------------------------------------- structured output

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5),
                      st.floats(-2, 2).filter(lambda x: not x.is_integer()),  # msgspec rejects 1.0 for int
                      st.sampled_from(["low", "medium", "high", "x"]))
keys = st.sampled_from(["name", "score", "z"])
json_value = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(keys, c, max_size=3)),
                          max_leaves=6)


@st.composite
def near_valid(draw):
    """Mostly well-formed `Out` dicts with random damage: fields dropped, added, or replaced."""
    value = {"label": draw(st.text(max_size=3)), "confidence": draw(st.sampled_from(["low", "medium", "high"])),
             "tags": draw(st.lists(st.text(max_size=2), max_size=2)),
             "inner": {"name": draw(st.text(max_size=2)), "score": draw(st.floats(-1, 1) | st.integers(-3, 3))},
             "note": draw(st.none() | st.text(max_size=2))}
    for _ in range(draw(st.integers(0, 2))):
        inner = value.get("inner")
        target = inner if isinstance(inner, dict) and inner and draw(st.booleans()) else value
        op = draw(st.sampled_from(["drop", "add", "replace"]))
        key = draw(st.sampled_from(sorted(target)))
        if op == "drop":
            target.pop(key)
        elif op == "add":
            target[draw(st.sampled_from(["extra", "z"]))] = draw(json_value)
        else:
            target[key] = draw(json_value)
        if not target:
            break
    return value


@settings(max_examples=300, deadline=None)
@given(near_valid())
def test_schema_check_agrees_with_msgspec_validation(value):
    try:
        msgspec.convert(value, Out)
        valid = True
    except msgspec.ValidationError:
        valid = False
    assert (schema_errors(value, OUT_SCHEMA) == []) == valid, schema_errors(value, OUT_SCHEMA)


@pytest.mark.parametrize("schema", [provider_schema(ExplanationOutput), OUT_SCHEMA,
                                    {"type": "object", "properties": {"xs": {"type": "array", "minItems": 2, "items":
                                     {"$ref": "#/$defs/P"}}}, "$defs": {"P": {"type": "integer", "minimum": 3}}}])
def test_fake_server_examples_satisfy_their_schema(schema):
    assert schema_errors(example_for_schema(schema), schema) == []


def test_decode_output_forms():
    schema = provider_schema(ExplanationOutput)
    good = '{"reasoning": "r", "label": "l", "confidence": "low"}'
    assert decode_output(good, schema) == ({"reasoning": "r", "label": "l", "confidence": "low"}, None)
    assert decode_output(f"```json\n{good}\n```", schema)[1] is None
    assert decode_output(f"Answer: {good} Hope it helps.", schema)[1] is None
    assert decode_output(good[:-5], schema) == (None, "invalid_json")
    assert decode_output('{"reasoning": "r", "label": "l", "confidence": "sure"}', schema)[1] == "schema_mismatch"
    extra = '{"reasoning": "r", "label": "l", "confidence": "low", "x": 1}'
    assert decode_output(extra, schema)[1] == "schema_mismatch"


# ---------------------------------------------------------------------------- backoff


def test_retry_after_forms():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "0.25"}) == 0.25
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 27 <= retry_after_s({"retry-after": date}) <= 30
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None


def test_backoff_is_exponential_capped_and_jittered():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, jitter=0.5)
    rng = random.Random(0)
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        draws = [backoff_s(policy, attempt, rng) for _ in range(200)]
        assert min(draws) >= step * 0.5 and max(draws) <= step and max(draws) - min(draws) > step * 0.3
    assert backoff_s(RetryPolicy(jitter=0.0, base_delay_s=0.5), 3) == 2.0
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)


# ---------------------------------------------------------------------------- limiter


def test_limiter_slow_start_then_aimd():
    lim = AdaptiveLimiter(32, AdaptivePolicy(initial=4, overload_window=10, overload_share=0.2))
    for _ in range(4):
        lim.succeeded()
    assert lim.limit == 8  # slow start: +1 per success, doubling per round trip
    t = time.monotonic()
    lim.overloaded(admitted_at=t)  # 1 overload in 5 replies: noise
    assert lim.limit == 8 and lim.slow_start
    lim.overloaded(admitted_at=t)  # 2 in 6: a signal
    assert lim.limit == 4 and not lim.slow_start
    lim.overloaded(admitted_at=t)  # same round trip: no second decrease
    assert lim.limit == 4
    for _ in range(4):
        lim.succeeded()
    assert lim.limit == pytest.approx(5.0, abs=0.1)  # additive: ~ +1 per window of successes
    for _ in range(10):
        lim.overloaded(admitted_at=time.monotonic() + 1)
    assert lim.limit == 1.0
    big = AdaptiveLimiter(3, AdaptivePolicy(initial=8))
    assert big.limit == 3 and [big.succeeded() for _ in range(5)] and big.limit == 3


def test_isolated_overloads_do_not_shrink_the_window():
    lim = AdaptiveLimiter(16, AdaptivePolicy(initial=16))
    for _ in range(50):
        for _ in range(19):
            lim.succeeded()
        lim.overloaded(admitted_at=time.monotonic() + 1)  # 5 % scattered 529s
    assert lim.limit == 16


def test_limiter_bounds_in_flight_and_is_fifo():
    async def go():
        lim = AdaptiveLimiter(2, AdaptivePolicy(initial=2))
        order, peak, active = [], [0], [0]

        async def worker(i):
            await lim.acquire()
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            order.append(i)
            await asyncio.sleep(0.01)
            active[0] -= 1
            lim.release()

        await asyncio.gather(*(worker(i) for i in range(10)))
        return order, peak[0], lim.in_flight
    order, peak, in_flight = asyncio.run(go())
    assert order == list(range(10)) and peak == 2 and in_flight == 0


def test_limiter_pause_and_ratelimit_headers():
    async def go():
        lim = AdaptiveLimiter(max_concurrent=4)
        lim.pause(0.2)
        t0 = time.monotonic()
        await lim.acquire()
        waited = time.monotonic() - t0
        lim.release()
        reset = (datetime.now(timezone.utc) + timedelta(seconds=10)).isoformat()  # 50 requests refill in 10 s
        lim.observe({"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "2",
                     "anthropic-ratelimit-requests-reset": reset})
        t1 = time.monotonic()
        for _ in range(4):  # 2 (+0.5 unseen fraction) in the bucket, refilled at 48 per 10 s
            await lim.acquire()
            lim.release()
        paced = time.monotonic() - t1
        lim.rate_limited()  # a 429: empty now
        empty_wait = lim._ready_at() - time.monotonic()
        lim.observe({"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "40",
                     "anthropic-ratelimit-requests-reset": reset})
        return waited, paced, empty_wait, lim.bucket, lim._ready_at() <= time.monotonic()
    waited, paced, empty_wait, bucket, free = asyncio.run(go())
    assert waited >= 0.19
    assert 1.5 * 10 / 48 - 0.02 <= paced <= 1.5 * 10 / 48 + 0.1  # two at once, then 0.5 and 1 token of refill
    assert 10 / 48 - 0.02 <= empty_wait <= 10 / 48 + 0.01
    assert bucket == 40.5 and free  # far from the limit: no waiting


def test_token_families_pause_when_exhausted():
    async def go():
        lim = AdaptiveLimiter(max_concurrent=4)
        reset = (datetime.now(timezone.utc) + timedelta(seconds=60)).isoformat()
        lim.observe({"anthropic-ratelimit-input-tokens-limit": "100000",
                     "anthropic-ratelimit-input-tokens-remaining": "0",
                     "anthropic-ratelimit-input-tokens-reset": reset})
        return lim.paused_until - time.monotonic()
    assert 0.5 <= asyncio.run(go()) <= 0.61  # 1000 tokens of a 100k/60 s bucket


def test_cancelled_waiter_does_not_leak_a_slot():
    async def go():
        lim = AdaptiveLimiter(1, AdaptivePolicy(initial=1))
        await lim.acquire()
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        lim.release()
        await asyncio.wait_for(lim.acquire(), 1)
        return lim.in_flight
    assert asyncio.run(go()) == 1


# ---------------------------------------------------------------------------- breaker


def test_breaker_opens_on_error_rate_and_probes_after_cooldown():
    br = CircuitBreaker(CircuitPolicy(window=10, min_attempts=4, error_rate=0.5, cooldown_s=0.05))
    for failed in [False, True, False]:
        br.record(failed)
    assert br.state == "closed"
    br.record(True)  # 2 of 4 failed
    assert br.state == "open" and br.admit() == ("circuit_open", False)
    time.sleep(0.06)
    assert br.admit() == (None, True) and br.admit() == ("circuit_open", False)  # one probe at a time
    br.record(True, probe=True)
    assert br.state == "open" and br.pause_s == pytest.approx(0.1)  # a failed probe doubles the pause
    time.sleep(0.06)
    assert br.admit() == ("circuit_open", False)
    time.sleep(0.05)
    assert br.admit() == (None, True)
    br.record(False, probe=True)
    assert br.state == "closed" and len(br.history) == 0 and br.admit() == (None, False)
    br.halt("http_401")
    assert br.admit() == ("http_401", False)


def test_breaker_ignores_neutral_outcomes():
    br = CircuitBreaker(CircuitPolicy(window=4, min_attempts=2, error_rate=0.5))
    for _ in range(10):
        br.neutral()
    assert br.state == "closed" and len(br.history) == 0


# ---------------------------------------------------------------------------- ledger


def test_ledger_reservations_and_cap():
    ledger = CostLedger(max_cost=1.0)
    assert ledger.reserve(0.6) and not ledger.reserve(0.5)  # 0.6 held + 0.5 > 1.0
    ledger.release(0.6)
    ledger.record(Usage(input_tokens=10, output_tokens=2, cache_read_input_tokens=5, cost_usd=0.7))
    ledger.record(Usage(cost_usd=0.0), error="refusal")
    assert ledger.reserve(0.3) and not ledger.reserve(0.01)
    totals = ledger.totals()
    assert totals.requests == 2 and totals.failures == {"refusal": 1} and totals.cost_usd == pytest.approx(0.7)
    assert totals.input_tokens == 10 and totals.cache_read_input_tokens == 5
    assert CostLedger().reserve(1e9)
    with pytest.raises(ValueError, match="max_cost"):
        CostLedger(max_cost=-1)


def test_breaker_honours_retry_after_and_wakes_every_waiter_when_a_probe_succeeds():
    async def go():
        br = CircuitBreaker(CircuitPolicy(window=4, min_attempts=2, error_rate=0.5, cooldown_s=0.05))
        br.record(True)
        br.record(True, retry_after=0.3)  # opens; the server asked for 0.3 s, longer than the cooldown
        t0 = time.monotonic()
        waiters = [asyncio.ensure_future(br.wait()) for _ in range(5)]
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop().result()
        opened_for = time.monotonic() - t0
        assert first == (None, True) and sum(w.done() for w in waiters) == 1  # one probe, the rest wait
        br.record(False, probe=True)
        rest = await asyncio.gather(*(w for w in waiters if not w.done()))
        return opened_for, rest, br.state
    opened_for, rest, state = asyncio.run(go())
    assert 0.29 <= opened_for < 0.5 and rest == [(None, False)] * 4 and state == "closed"


def test_breaker_stops_after_the_outage_window():
    br = CircuitBreaker(CircuitPolicy(window=2, min_attempts=1, error_rate=0.5, cooldown_s=0.01, max_outage_s=0.05))
    br.record(True)
    time.sleep(0.06)
    assert br.admit() == ("circuit_open", False) and br.fatal == "circuit_open" and "kept failing" in br.stopped
    assert asyncio.run(br.wait()) == ("circuit_open", False)  # no waiting once stopped
