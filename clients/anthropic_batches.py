"""Anthropic Message Batches: submit, poll, fetch results, at half price, restart-safe.

    summary = await run_batches(client, requests, on_result, state_path=RUN / "interpretations/batches.json")

`client` is an Anthropic client from `make_client` (its key, price table, cache
TTL and ledger are used; pass cache_ttl="1h" since batches outlive the 5 min
cache). Steps, each persisted in the state file before the next:

1. Requests already inside an unfinished batch of the state file are not
   submitted again; the rest are split into batches (<= 100,000 requests and
   <= `max_bytes` each).
2. Creating a batch is not idempotent, so the intent (time, size, ids) is
   written first. If the process dies before the new batch id is saved, the
   next run lists recent batches and adopts the one created after the intent
   with the same request count; it re-submits only if no such batch exists.
3. Batches are polled until they end; their JSONL results (in any order) are
   joined on custom_id and handed to `on_result` for the requests of this
   call only, then the batch is marked done.
So a restart never submits a request twice, and every request passed in gets
exactly one response. Params are built from the model's capabilities at
submit time (clients.capabilities); an item that errors because the model
rejects a field it was sent (e.g. `temperature`) teaches the client to drop it,
and such items are submitted once more in a new batch instead of failing.
Batch custom_ids must match ^[a-zA-Z0-9_-]{1,64}$; ours
like "explain:blocks.2.hook_resid_post/17" are mapped to a readable safe form
plus a hash (`batch_custom_id`). The state file and its records live in
clients.batch_state (re-exported here); this module is the runner.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
from tqdm import tqdm

from clients.anthropic import AnthropicWire, params_body
from clients.backoff import backoff_s, retry_after_s
from clients.base import CompletionRequest, CompletionResponse, failed
from clients.batch_state import BatchRecord, BatchState, PendingCreate, batch_custom_id, load_state, save_state
from clients.batch_wire import (
    ERROR_TYPES,
    BatchList,
    BatchObject,
    ErrorBody,
    ErrorInner,
    Result,
    ResultLine,
    shaped,
    unix_time,
)
from clients.capabilities import refused_field
from clients.errors import ClientConfigError
from clients.http_client import HTTPClient, scrub
from clients.keys import redact
from clients.runner import RunSummary
from clients.structured import UNDECODABLE
from clients.verdict import http_verdict

__all__ = ["BatchPolicy", "BatchRecord", "BatchRunner", "BatchState", "PendingCreate", "batch_custom_id",
           "load_state", "run_batches", "save_state"]

log = logging.getLogger("clients")
_encode = msgspec.json.Encoder().encode
@dataclass(frozen=True)
class BatchPolicy:
    """How batches are cut and watched."""

    poll_interval_s: float = 30.0
    "Wait between status polls (most batches end within an hour)."
    max_requests: int = 100_000
    "Requests per batch (the API limit)."
    max_bytes: int = 200 * 2**20
    "Encoded size per batch, under the API's 256 MB."
    adopt_skew_s: float = 300.0
    "Clock skew allowed when matching a batch to an interrupted create (server created_at vs our clock)."


class BatchRunner:
    """One `run_batches` call: the client, the state file and the requests of this call."""

    def __init__(self, client: HTTPClient, state_path: Path, policy: BatchPolicy):
        if not isinstance(client.wire, AnthropicWire):
            raise ClientConfigError("Message Batches need an Anthropic client: "
                                    "make_client('anthropic', MODEL, cache_ttl='1h')")
        self.client = client
        self.wire: AnthropicWire = client.wire
        self.root = self.wire.url  # .../v1/messages
        self.path = Path(state_path)
        self.policy = policy
        self.state = load_state(self.path)
        self.session: aiohttp.ClientSession | None = None
        self.resubmit: list[tuple[str, CompletionRequest]] = []
        "Items whose result errored on a field the model rejects, to submit again without it."
        self.resubmitted: set[str] = set()

    # ------------------------------------------------------------------ HTTP with retries (control plane)

    async def call(self, method: str, url: str, payload: bytes | None = None, idempotent: bool = True,
                    consume: Callable[[aiohttp.ClientResponse], Awaitable[object]] | None = None):
        """The decoded JSON of a 200 reply (or what `consume(response)` returns), retrying transient
        failures; `consume` must tolerate being restarted. A non-idempotent call raises _CreateUncertain
        instead of retrying, since it may have taken effect."""
        retry = self.client.retry
        t = self.client.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total_s, sock_connect=t.connect_s, sock_read=t.read_s)
        for attempt in range(1, retry.max_attempts + 1):
            wait: float | None = None
            try:
                async with self.session.request(method, url, data=payload, timeout=timeout,
                                                headers={"content-type": "application/json"}) as resp:
                    if resp.status == 200 and consume is not None:
                        return await consume(resp)
                    body = await resp.read()
                    if resp.status == 200:
                        try:
                            return msgspec.json.decode(body)
                        except UNDECODABLE:  # a garbled 200 (proxy page, cut body): transient, like a dropped read
                            raise aiohttp.ClientPayloadError("undecodable 200 body") from None
                    try:
                        err = msgspec.json.decode(body, type=ErrorBody).error
                    except UNDECODABLE:
                        err = ErrorInner(message=redact(body.decode("utf-8", "replace"))[:200])  # redact, then cut
                    verdict = http_verdict(resp.status, retry_after_s(resp.headers), f"{err.type}: {err.message}",
                                           resp.headers.get("request-id", ""))
                    if verdict.kind != "retry":
                        raise ClientConfigError(f"batch {method} {url.rsplit('/v1/', 1)[-1]} failed: {verdict.error} "
                                                f"({redact(verdict.detail)[:200]})")
                    if not idempotent:
                        raise _CreateUncertain(verdict.retry_after)
                    wait = verdict.retry_after
            except (asyncio.TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
                if not idempotent:
                    raise _CreateUncertain(None) from e
                log.debug("batch %s %s: %s, retrying", method, url, type(e).__name__)
            if attempt < retry.max_attempts:
                await asyncio.sleep(wait if wait is not None else backoff_s(retry, attempt, self.client.rng))
        raise ClientConfigError(f"batch {method} {url.rsplit('/v1/', 1)[-1]} kept failing after {retry.max_attempts} "
                                "attempts; rerun the same command later to resume (submitted batches are in the "
                                "state file)")

    # ------------------------------------------------------------------ steps

    async def adopt_pending(self) -> None:
        """Resolve a create that was interrupted: adopt the batch it made, or forget it if none was made."""
        pending = self.state.pending
        if pending is None:
            return
        known = {b.id for b in self.state.batches}
        listing = shaped(await self.call("GET", self.root + "/batches?limit=100"), BatchList)
        matches = [b for b in listing.data if b.id not in known
                   and unix_time(b.created_at) >= pending.started_at - self.policy.adopt_skew_s
                   and sum(b.request_counts.values()) == len(pending.custom_ids)]
        if len(matches) > 1:
            raise ClientConfigError(f"{self.path}: an interrupted batch create matches {len(matches)} recent batches "
                                    f"({', '.join(b.id for b in matches)}); cancel the extra ones in the console, then "
                                    "set 'pending' to null in the state file")
        if matches:
            log.info("adopting batch %s from an interrupted create", matches[0].id)
            self.state.batches.append(BatchRecord(id=matches[0].id, custom_ids=pending.custom_ids,
                                                  created_at=pending.started_at))
        self.state.pending = None
        save_state(self.path, self.state)

    async def submit(self, items: list[tuple[str, CompletionRequest]]) -> str:
        """Create one batch for `items` ((batch id, request) pairs), intent first."""
        entries = [{"custom_id": bid, "params": params_body(r, self.wire.model, self.wire.cache_ttl,
                                                             self.wire.caps.caps.drop)} for bid, r in items]
        payload = _encode({"requests": entries})
        for attempt in range(1, self.client.retry.max_attempts + 1):
            self.state.pending = PendingCreate(started_at=time.time(), custom_ids=[bid for bid, _ in items])
            save_state(self.path, self.state)
            try:
                created = shaped(await self.call("POST", self.root + "/batches", payload, idempotent=False),
                                          BatchObject)
            except _CreateUncertain as e:
                await self.adopt_pending()
                adopted = [b for b in self.state.batches if b.custom_ids == [bid for bid, _ in items] and not b.done]
                if adopted:
                    return adopted[-1].id
                wait = e.retry_after
                if wait is None:
                    wait = backoff_s(self.client.retry, attempt, self.client.rng)
                await asyncio.sleep(wait)
                continue
            except ClientConfigError:
                self.state.pending = None
                save_state(self.path, self.state)
                raise
            self.state.batches.append(BatchRecord(id=created.id, custom_ids=[bid for bid, _ in items],
                                                  created_at=self.state.pending.started_at))
            self.state.pending = None
            save_state(self.path, self.state)
            log.info("submitted batch %s (%d requests)", created.id, len(items))
            return created.id
        raise ClientConfigError("creating a message batch kept failing; rerun the same command later to resume")

    async def results(self, record: BatchRecord, url: str, wanted: dict[str, CompletionRequest],
                      deliver: Callable[[CompletionResponse], Awaitable[None]]) -> None:
        """Stream a finished batch's JSONL results, deliver those still wanted, then mark the batch done."""
        decode = msgspec.json.Decoder(ResultLine).decode
        seen: set[str] = set()  # survives a restarted download, so nothing is delivered twice

        async def handle(line: bytes) -> None:
            if not line.strip():
                return
            try:
                item = decode(line)
            except UNDECODABLE as e:
                log.warning("batch %s: unreadable result line skipped (%s)", record.id, e)
                return
            request = wanted.get(item.custom_id)
            if request is not None and item.custom_id not in seen:
                seen.add(item.custom_id)
                if self.learned_from(item.custom_id, item.result):
                    self.resubmit.append((item.custom_id, request))
                else:
                    await deliver(self.to_response(request, item.result))

        async def consume(resp: aiohttp.ClientResponse) -> None:
            tail = b""
            async for chunk in resp.content.iter_chunked(1 << 16):
                *lines, tail = (tail + chunk).split(b"\n")
                for line in lines:
                    await handle(line)
            await handle(tail)

        await self.call("GET", url, consume=consume)
        for bid in record.custom_ids:  # a request the results left out is still accounted for
            if bid in wanted and bid not in seen:
                await deliver(failed(wanted[bid], self.wire.model, "missing_result", attempts=1))
        record.done = True
        save_state(self.path, self.state)

    def learned_from(self, bid: str, result: Result) -> bool:
        """True when an errored item names a field the model rejects (now dropped) and was not resubmitted yet."""
        if result.type != "errored" or result.error is None or bid in self.resubmitted:
            return False
        if result.error.error.type != "invalid_request_error":
            return False
        field = refused_field(result.error.error.message, {"temperature": 0})
        if field is None:
            return False
        self.wire.caps.learn_drop(field)
        self.resubmitted.add(bid)
        return True

    def to_response(self, request: CompletionRequest, result: Result) -> CompletionResponse:
        if result.type == "succeeded" and result.message is not None:
            return scrub(self.wire.response(request, result.message, batch=True))
        if result.type == "errored":
            etype = result.error.error.type if result.error else ""
            log.warning("%s: batch item errored: %s", request.custom_id,
                        redact(result.error.error.message if result.error else "")[:200])
            return failed(request, self.wire.model, ERROR_TYPES.get(etype, "server_error"), attempts=1)
        return failed(request, self.wire.model, "canceled" if result.type == "canceled" else "expired", attempts=1)


class _CreateUncertain(Exception):
    """The create request may or may not have taken effect."""

    def __init__(self, retry_after: float | None):
        super().__init__()
        self.retry_after = retry_after


async def run_batches(client: HTTPClient, requests: Iterable[CompletionRequest],
                      on_result: Callable[[CompletionResponse], None | Awaitable[None]], state_path: str | Path,
                      policy: BatchPolicy = BatchPolicy(), progress: bool = True) -> RunSummary:
    """Run `requests` through Message Batches; `on_result` once per request (in result order)."""
    started = time.monotonic()
    runner = BatchRunner(client, Path(state_path), policy)
    runner.session = client.session()
    wanted: dict[str, CompletionRequest] = {}
    for r in requests:
        bid = batch_custom_id(r.custom_id)
        if bid in wanted:
            raise ClientConfigError(f"duplicate custom_id {r.custom_id!r} in the requests: each item must have "
                                    "a unique id")
        wanted[bid] = r
    failures: Counter[str] = Counter()
    counts = {"completed": 0, "succeeded": 0}
    cost = [0.0]
    bar = tqdm(total=len(wanted), desc="batch", unit="req", disable=not progress, dynamic_ncols=True)

    async def deliver(response: CompletionResponse) -> None:
        client.ledger.record(response.usage, response.error)
        out = on_result(response)
        if inspect.isawaitable(out):
            await out
        counts["completed"] += 1
        cost[0] += response.usage.cost_usd
        if response.error is None:
            counts["succeeded"] += 1
        else:
            failures[response.error] += 1
        bar.update(1)

    reserved: dict[str, float] = {}  # batch id -> cost held until its results are recorded

    async def submit_within_budget(chunk) -> str | None:
        """Reserve the chunk's worst-case cost, then submit it (its id); past the budget its requests fail."""
        estimate = sum(runner.wire.estimate_usd(r, len(_encode(params_body(r, runner.wire.model))))
                       for _, r in chunk) * runner.wire.prices.batch_discount
        if not client.ledger.reserve(estimate):
            for _, r in chunk:
                await deliver(failed(r, runner.wire.model, "budget_exceeded", attempts=0))
            return None
        try:
            bid = await runner.submit(chunk)
        except BaseException:
            client.ledger.release(estimate)
            raise
        reserved[bid] = estimate
        return bid

    try:
        await runner.adopt_pending()
        in_batches = {bid for b in runner.state.batches if not b.done for bid in b.custom_ids}
        fresh = [(bid, r) for bid, r in wanted.items() if bid not in in_batches]
        for chunk in _chunks(fresh, runner.wire, policy):
            await submit_within_budget(chunk)
        open_records = [b for b in runner.state.batches if not b.done and any(bid in wanted for bid in b.custom_ids)]
        while open_records:
            for record in list(open_records):
                status = shaped(await runner.call("GET", f"{runner.root}/batches/{record.id}"), BatchObject)
                if status.processing_status == "ended":
                    url = status.results_url or f"{runner.root}/batches/{record.id}/results"
                    await runner.results(record, url, wanted, deliver)
                    client.ledger.release(reserved.pop(record.id, 0.0))
                    open_records.remove(record)
                    if runner.resubmit:  # rebuilt without what the model rejected
                        again, runner.resubmit = runner.resubmit, []
                        for chunk in _chunks(again, runner.wire, policy):  # reserved like the first submission
                            bid = await submit_within_budget(chunk)
                            if bid is not None:
                                open_records.append(next(b for b in runner.state.batches if b.id == bid))
                else:
                    bar.set_postfix(batch=record.id[-8:], **{k: v for k, v in status.request_counts.items() if v},
                                    refresh=True)
            if open_records:
                await asyncio.sleep(policy.poll_interval_s)
    finally:
        for estimate in reserved.values():
            client.ledger.release(estimate)
        bar.close()
    return RunSummary(completed=counts["completed"], succeeded=counts["succeeded"], failures=dict(failures),
                      cost_usd=cost[0], wall_s=time.monotonic() - started)


def _chunks(items: list[tuple[str, CompletionRequest]], wire: AnthropicWire, policy: BatchPolicy):
    chunk: list[tuple[str, CompletionRequest]] = []
    size = 0
    for bid, r in items:
        n = len(_encode(params_body(r, wire.model))) + len(bid) + 32
        if chunk and (len(chunk) >= policy.max_requests or size + n > policy.max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append((bid, r))
        size += n
    if chunk:
        yield chunk
