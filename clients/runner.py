"""Run many requests through one client and hand each response over as soon as it is done.

`run_requests` pulls requests lazily from any iterable, keeps a bounded
window of them pending (more than the client's concurrency, so requests
sleeping in backoff do not leave HTTP slots idle; the client's own limiter
bounds what is on the wire), and calls `on_result` once per request, in
completion order. Every request yields exactly one response: a failure is a
response with `error` set, never a lost item. A duplicate `custom_id` is a
ClientConfigError raised before that request is sent. When the client stopped
sending (`client.stopped`: an outage past the breaker's window, a fatal
error), `ClientStopped` is raised after the last response was handed over,
with the reason, the last server message and the count not sent, so a
command line ends with that one line and a non-zero exit status.

`until_stopped(client, requests)` wraps a lazy source so that nothing more is
built once the client has stopped (a command's prompts, its replayed windows):
the requests never pulled get no response, and when `total` is given the
message counts them as not sent.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator

import msgspec
from tqdm import tqdm

from clients.base import Client, CompletionRequest, CompletionResponse
from clients.errors import ClientConfigError, ClientStopped


class RunSummary(msgspec.Struct, kw_only=True):
    """What one `run_requests` call did."""

    completed: int
    "Responses delivered (successes and failures)."
    succeeded: int
    failures: dict[str, int]
    "Failed responses by error code."
    cost_usd: float
    "Cost of this run's responses."
    wall_s: float


async def run_requests(client: Client, requests: Iterable[CompletionRequest] | AsyncIterable[CompletionRequest],
                       on_result: Callable[[CompletionResponse], None | Awaitable[None]], progress: bool = True,
                       total: int | None = None, window: int | None = None, desc: str = "requests",
                       raise_on_stop: bool = True) -> RunSummary:
    """Complete every request with `client`; `on_result(response)` (sync or async) as each finishes. With
    `raise_on_stop` (default) a client that stopped sending raises ClientStopped once all are delivered."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    window = window or 4 * getattr(client, "max_concurrent", 16)
    if total is None and hasattr(requests, "__len__"):
        total = len(requests)  # type: ignore[arg-type]
    seen: set[str] = set()
    failures: Counter[str] = Counter()
    completed = succeeded = not_sent = 0
    cost = 0.0
    bar = tqdm(total=total, desc=desc, unit="req", disable=not progress, dynamic_ncols=True)
    pending: set[asyncio.Task] = set()
    source = _aiter(requests)
    exhausted = False
    try:
        while pending or not exhausted:
            while not exhausted and len(pending) < window:
                request = await anext(source, None)
                if request is None:
                    exhausted = True
                    break
                if request.custom_id in seen:
                    raise ClientConfigError(f"duplicate custom_id {request.custom_id!r} in the requests: each item "
                                            "must have a unique id")
                seen.add(request.custom_id)
                pending.add(asyncio.ensure_future(client.complete(request)))
            if not pending:
                break
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                response = task.result()
                result = on_result(response)
                if inspect.isawaitable(result):
                    await result
                completed += 1
                cost += response.usage.cost_usd
                if response.error is None:
                    succeeded += 1
                else:
                    failures[response.error] += 1
                    not_sent += response.attempts == 0 or response.error == "circuit_open"  # never answered
                bar.update(1)
                if failures:
                    bar.set_postfix(cost=f"${cost:.4f}", failed=sum(failures.values()), refresh=False)
                else:
                    bar.set_postfix(cost=f"${cost:.4f}", refresh=False)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        bar.close()
    stopped = getattr(client, "stopped", None)
    if stopped and raise_on_stop:
        unbuilt = max(0, total - completed) if total is not None else 0  # left in the source (until_stopped)
        raise ClientStopped(f"{desc}: the client stopped: {stopped}; {not_sent + unbuilt} of {completed + unbuilt} "
                            f"requests not sent (failures: {_codes(failures)}) -- rerun the same command to continue",
                            not_sent=not_sent + unbuilt)
    return RunSummary(completed=completed, succeeded=succeeded, failures=dict(failures), cost_usd=cost,
                      wall_s=loop.time() - started)


def until_stopped(client: Client, requests: Iterable[CompletionRequest]) -> Iterator[CompletionRequest]:
    """`requests`, pulled one at a time while `client` still sends: once it stopped, the rest are not built."""
    it = iter(requests)
    while not getattr(client, "stopped", None):
        request = next(it, None)
        if request is None:
            return
        yield request


def _codes(failures: Counter[str]) -> str:
    return ", ".join(f"{n} {code}" for code, n in failures.most_common())


async def _aiter(requests):
    if hasattr(requests, "__aiter__"):
        async for r in requests:
            yield r
    else:
        for r in requests:
            yield r
