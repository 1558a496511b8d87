"""What both wire formats of the fake provider server share: its state and the provider behaviour.

`ProviderSimulation` holds the server's settings and counters and simulates a
provider: it picks the scripted fault for a request, keeps the token-bucket
rate limit, counts tokens (~4 characters each) with a prompt cache, makes the
reply text (after content faults) and stalls, drops or cuts a reply. The wire
formats (anthropic_wire, batches_wire, openai_wire) build on it, and
server.FakeLLMServer adds the aiohttp app and its lifecycle.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time

import msgspec
from aiohttp import web

from clients.testing.faults import BATCH_FAULTS, Fault
from clients.testing.schema_examples import Responder, default_responder

encode = msgspec.json.Encoder().encode
"JSON bytes of a reply body, as the wire formats send it."
_decode = msgspec.json.Decoder().decode


def approx_tokens(text: str) -> int:
    """Tokens billed for `text`: about 4 characters each, at least 1 for any text."""
    return max(1, len(text) // 4) if text else 0


def _blocks(body: dict) -> list[dict]:
    """All prompt text blocks in order (system first), as dicts with 'text' and maybe 'cache_control'."""
    out = []
    system = body.get("system")
    if isinstance(system, str):
        out.append({"text": system})
    elif isinstance(system, list):
        out += [b for b in system if isinstance(b, dict)]
    for m in body.get("messages", []):
        c = m.get("content")
        out += [{"text": c}] if isinstance(c, str) else [b for b in c or [] if isinstance(b, dict)]
    return out


class ProviderSimulation:
    """Settings, counters and the provider behaviour shared by every route of the fake server."""

    def __init__(self, responder: Responder | None = None, faults: list[Fault] | None = None, latency_s: float = 0.0,
                 rate_limit_rps: float | None = None, *, rate_limit_burst: float | None = None,
                 api_key: str | None = None, cache_min_tokens: int = 0, thinking_block: bool = False,
                 openrouter: bool = False, batch_polls: int = 1, wire: str = "both", port: int = 0, seed: int = 0,
                 reject_fields: tuple[str, ...] = (), llama_cpp: bool = False, serial: bool = False):
        """latency_s: time from a request's arrival to its reply (error replies are immediate).
        rate_limit_rps: token-bucket limit on served completion requests (429 + retry-after beyond it;
        scripted error replies spend no budget); burst defaults to max(1, rps/10). api_key: when set,
        requests must carry it (else 401). cache_min_tokens: shortest prefix the cache keeps.
        thinking_block: put a thinking block before the text (Anthropic). openrouter: add usage.cost
        and OpenRouter-shaped errors. batch_polls: status polls a batch stays in_progress.
        reject_fields: request fields the model refuses with a 400 (e.g. ('temperature',), as Claude from 4.7
        on; batch items error). llama_cpp: answer as llama_cpp.server does (a 500 for response_format
        json_schema; {type: json_object, schema} taken). serial: compute one completion at a time, as a
        single-slot local server (a request waits for the ones before it; an abandoned one is still computed)."""
        if wire not in ("anthropic", "openai", "both"):
            raise ValueError(f"wire must be 'anthropic', 'openai' or 'both', got {wire!r}")
        self.responder = responder or default_responder
        self.faults = list(faults or [])
        self.latency_s = latency_s
        self.rate_limit_rps = rate_limit_rps
        self.burst = rate_limit_burst or (max(1.0, rate_limit_rps / 10) if rate_limit_rps else 0.0)
        self.api_key = api_key
        self.cache_min_tokens = cache_min_tokens
        self.thinking_block = thinking_block
        self.openrouter = openrouter
        self.batch_polls = batch_polls
        self.reject_fields = tuple(reject_fields)
        self.llama_cpp = llama_cpp
        self.serial = serial
        self._slot: asyncio.Lock | None = None
        self.wire = wire
        self.port = port
        self.rng = random.Random(seed)
        self.base_url = ""
        self.requests_seen: list[dict] = []
        "Every POSTed JSON body, in arrival order (retries included)."
        self.headers_seen: list[dict[str, str]] = []
        "Headers of each entry of requests_seen."
        self.batches: dict[str, dict] = {}
        self.responses_sent = 0
        "Completion replies produced (a dropped or stalled reply counts: the server did the work)."
        self.in_flight = 0
        self.max_in_flight = 0
        "Most requests handled at once."
        self._cache: set[str] = set()
        self._bucket = self.burst
        self._refilled = time.monotonic()
        self._counter = 0
        self._closing: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    def stats(self) -> dict[str, int]:
        return {"requests_seen": len(self.requests_seen), "responses_sent": self.responses_sent,
                "faults_served": sum(f.used for f in self.faults), "max_in_flight": self.max_in_flight,
                "batches": len(self.batches)}

    # ------------------------------------------------------------------ shared helpers

    def _pick_fault(self, text: str, kinds: set[str] | None = None) -> Fault | None:
        for f in self.faults:
            if kinds is not None and f.kind not in kinds:
                continue
            if kinds is None and f.kind in BATCH_FAULTS:
                continue
            if (f.times and f.used >= f.times) or (f.match and f.match not in text) or not f.live():
                continue
            if f.probability < 1.0 and self.rng.random() >= f.probability:
                continue
            f.used += 1
            return f
        return None

    def _take_token(self) -> float | None:
        """None if the request may proceed under the rate limit; else seconds until a token is free."""
        if not self.rate_limit_rps:
            return None
        now = time.monotonic()
        self._bucket = min(self.burst, self._bucket + (now - self._refilled) * self.rate_limit_rps)
        self._refilled = now
        if self._bucket >= 1.0:
            self._bucket -= 1.0
            return None
        return (1.0 - self._bucket) / self.rate_limit_rps

    def _rejected_field(self, body: dict) -> str | None:
        """The first field of `body` this model refuses (reject_fields), if any."""
        return next((f for f in self.reject_fields if f in body), None)

    async def _compute(self, arrived: float) -> None:
        """The reply's latency from arrival; a serial server first waits for its one slot, then takes the whole
        latency in it (a client that gave up meanwhile does not stop the computation)."""
        if not self.serial:
            await asyncio.sleep(max(0.0, self.latency_s - (time.monotonic() - arrived)))
            return
        if self._slot is None:
            self._slot = asyncio.Lock()
        async with self._slot:
            await asyncio.sleep(self.latency_s)

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_fake{self._counter:06d}"

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at shutdown so stalled handlers never hold the server open (for stalls;
        the short reply latency uses a plain, cheaper asyncio.sleep)."""
        if seconds > 0:
            try:
                await asyncio.wait_for(self._closing.wait(), seconds)
            except asyncio.TimeoutError:
                pass

    async def _read(self, request: web.Request) -> tuple[dict, str]:
        data = await request.read()
        body = _decode(data)
        raw = data.decode()
        self.requests_seen.append(body)
        self.headers_seen.append(dict(request.headers))
        return body, raw

    def _reply_text(self, body: dict, fault: Fault | None) -> tuple[str, str]:
        """(text, stop) for a completion, after content faults. stop is 'end' | 'max_tokens' | 'refusal'."""
        out = self.responder(body)
        text = out if isinstance(out, str) else json.dumps(out)
        kind = fault.kind if fault else ""
        if kind == "refusal":
            return "I can't help with that.", "refusal"
        if kind == "max_tokens":
            return text[: max(1, len(text) // 2)], "max_tokens"
        if kind == "truncate":
            return text[: max(1, len(text) // 2)], "end"
        if kind == "bad_json":
            return "Sure! Here is the answer: " + text.replace("{", "(", 1), "end"
        if kind == "wrong_schema":
            return json.dumps({"unexpected": True}), "end"
        if kind == "raw_newlines":
            return text.replace("\\n", "\n"), "end"
        return text, "end"

    def _prompt_usage(self, body: dict) -> tuple[int, int, int, str]:
        """(uncached input, cache read, cache write, ttl) with the prompt cache simulated."""
        blocks = _blocks(body)
        total = sum(approx_tokens(b.get("text", "")) for b in blocks)
        marked = [i for i, b in enumerate(blocks) if b.get("cache_control")]
        if not marked:
            return total, 0, 0, "5m"
        cut = marked[-1] + 1
        prefix = "\x00".join(b.get("text", "") for b in blocks[:cut])
        prefix_tokens = sum(approx_tokens(b.get("text", "")) for b in blocks[:cut])
        ttl = blocks[marked[-1]]["cache_control"].get("ttl", "5m")
        if prefix_tokens < self.cache_min_tokens:
            return total, 0, 0, ttl
        key = hashlib.sha256(f"{body.get('model')}\x00{prefix}".encode()).hexdigest()
        if key in self._cache:
            return total - prefix_tokens, prefix_tokens, 0, ttl
        self._cache.add(key)
        return total - prefix_tokens, 0, prefix_tokens, ttl

    async def _misbehave(self, request: web.Request, fault: Fault, payload: bytes, headers: dict) -> web.StreamResponse:
        """Stall, drop or disconnect instead of (or while) sending `payload`."""
        if fault.kind == "disconnect":
            request.transport.close()
            return web.Response(status=500)
        if fault.kind == "stall" and not fault.after_headers:
            await self._sleep(fault.seconds)
            return web.Response(body=payload, content_type="application/json", headers=headers)
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "application/json"
        resp.content_length = len(payload)
        await resp.prepare(request)
        if fault.kind == "stall":
            await self._sleep(fault.seconds)
            await resp.write(payload)
            return resp
        await resp.write(payload[: len(payload) // 2])  # drop: half the body, then the socket goes
        request.transport.close()
        return resp
