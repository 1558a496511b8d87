"""A local LLM server that speaks both wire formats and misbehaves on cue.

A real `aiohttp.web` server on 127.0.0.1 (ephemeral port), so tests exercise
the real connector, pool, timeouts and keep-alive code:

  POST /v1/messages                     Anthropic Messages
  POST /v1/messages/batches             Anthropic Message Batches: create, then
  GET  /v1/messages/batches[/{id}[/results]]  list, poll, JSONL results (shuffled)
  POST /v1/messages/batches/{id}/cancel
  POST /v1/chat/completions             OpenAI-compatible (OpenRouter / vLLM / llama.cpp shapes)
  GET  /stats                           counters (requests seen, replies, faults served, peak in flight)

    async with FakeLLMServer(faults=[Fault.http(429, retry_after=0.1)]) as server:
        client = make_client("anthropic", "claude-haiku-4-5", base_url=server.base_url)

The reply text comes from `responder(request_json)` (a str, or a dict that is
JSON-encoded); by default a valid JSON object for the requested schema. Each
incoming completion request takes the first live `Fault` that matches it.
Usage is counted at ~4 characters per token; the prompt cache is simulated
(a prefix marked with cache_control is written once, then read).

CLI, for trying a client by hand:
    python -m clients.fake_server --port 8765 --wire anthropic [--latency 0.3] [--rate-limit 20] [--fault-rate 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
from aiohttp import web

Responder = Callable[[dict], "str | dict"]
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CONTENT_FAULTS = {"refusal", "max_tokens", "truncate", "wrong_schema", "bad_json"}
BATCH_FAULTS = {"batch_errored", "batch_canceled", "batch_expired", "batch_missing"}


@dataclass
class Fault:
    """One scripted misbehaviour. A request takes the first fault whose `match` it contains and
    whose `times` is not used up (then with chance `probability`)."""

    kind: str
    """HTTP: status | spend_limit | credits | in_flight_budget | error_200 | stall | drop | disconnect;
    content: refusal | max_tokens | truncate | wrong_schema | bad_json; batch items: batch_errored |
    batch_canceled | batch_expired | batch_missing (no result line). status, drop and disconnect also
    apply to batch creation (drop: the batch is made, the reply lost)."""
    status: int = 500
    "HTTP status for kind='status'."
    retry_after: float | None = None
    "Value of the retry-after header (seconds), if any."
    times: int = 1
    "Requests this fault applies to; 0 = unlimited."
    match: str = ""
    "Apply only to requests whose JSON text contains this string ('' = all)."
    probability: float = 1.0
    "Chance that a matching request gets the fault (seeded)."
    seconds: float = 5.0
    "Stall length for kind='stall'."
    after_headers: bool = False
    "Stall after sending the headers (else before)."
    error_type: str = "provider_overloaded"
    "OpenRouter error.metadata.error_type for kind='error_200'."
    message: str = ""
    "Error message for kind='status' (default 'scripted <status>')."
    used: int = field(default=0, init=False)

    @classmethod
    def http(cls, status: int, retry_after: float | None = None, **kw: Any) -> "Fault":
        return cls("status", status=status, retry_after=retry_after, **kw)

    @classmethod
    def stall(cls, seconds: float, after_headers: bool = False, **kw: Any) -> "Fault":
        return cls("stall", seconds=seconds, after_headers=after_headers, **kw)

    @classmethod
    def of(cls, kind: str, **kw: Any) -> "Fault":
        return cls(kind, **kw)


def fault_mix(rate: float, retry_after: float = 0.05) -> list[Fault]:
    """Unlimited random faults, `rate` of requests in all: 429, 500, 529, 503, 504, dropped socket."""
    kinds = [Fault.http(429, retry_after=retry_after), Fault.http(500), Fault.http(529), Fault.http(503),
             Fault.http(504), Fault.of("drop")]
    p = 1.0 - (1.0 - rate) ** (1.0 / len(kinds))  # so that P(any fault) = rate
    for f in kinds:
        f.times, f.probability = 0, p
    return kinds


# ---------------------------------------------------------------------------- canned content


def example_for_schema(schema: dict, root: dict | None = None) -> Any:
    """A value that satisfies `schema` (the subset providers accept)."""
    root = root or schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        return example_for_schema(target, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return example_for_schema(options[0], root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {k: example_for_schema(v, root) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        n = max(1, schema.get("minItems", 1))
        return [example_for_schema(schema.get("items", {"type": "string"}), root) for _ in range(n)]
    if kind == "string":
        return "example"
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 0.5))
    if kind == "boolean":
        return True
    return None


def requested_schema(body: dict) -> dict | None:
    """The JSON schema a request asks for, in either wire format (llama.cpp's top-level `schema` too)."""
    fmt = (body.get("output_config") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return fmt.get("schema")
    rf = body.get("response_format") or {}
    if rf.get("type") in ("json_schema", "json_object"):
        return (rf.get("json_schema") or {}).get("schema") or rf.get("schema")
    return None


def default_responder(body: dict) -> str | dict:
    schema = requested_schema(body)
    return "OK" if schema is None else example_for_schema(schema)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict))


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


# ---------------------------------------------------------------------------- server


class FakeLLMServer:
    """The fake server: scripted faults, a token-bucket rate limit, a simulated prompt cache, batches."""

    def __init__(self, responder: Responder | None = None, faults: list[Fault] | None = None, latency_s: float = 0.0,
                 rate_limit_rps: float | None = None, *, rate_limit_burst: float | None = None,
                 api_key: str | None = None, cache_min_tokens: int = 0, thinking_block: bool = False,
                 openrouter: bool = False, batch_polls: int = 1, wire: str = "both", port: int = 0, seed: int = 0):
        """latency_s: time from a request's arrival to its reply (error replies are immediate).
        rate_limit_rps: token-bucket limit on served completion requests (429 + retry-after beyond it;
        scripted error replies spend no budget); burst defaults to max(1, rps/10). api_key: when set,
        requests must carry it (else 401). cache_min_tokens: shortest prefix the cache keeps.
        thinking_block: put a thinking block before the text (Anthropic). openrouter: add usage.cost
        and OpenRouter-shaped errors. batch_polls: status polls a batch stays in_progress."""
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

    # ------------------------------------------------------------------ lifecycle

    def stats(self) -> dict[str, int]:
        return {"requests_seen": len(self.requests_seen), "responses_sent": self.responses_sent,
                "faults_served": sum(f.used for f in self.faults), "max_in_flight": self.max_in_flight,
                "batches": len(self.batches)}

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._count])
        app.router.add_get("/stats", self._stats)
        if self.wire in ("anthropic", "both"):
            app.router.add_post("/v1/messages", self._messages)
            app.router.add_post("/v1/messages/batches", self._batch_create)
            app.router.add_get("/v1/messages/batches", self._batch_list)
            app.router.add_get("/v1/messages/batches/{id}", self._batch_get)
            app.router.add_get("/v1/messages/batches/{id}/results", self._batch_results)
            app.router.add_post("/v1/messages/batches/{id}/cancel", self._batch_cancel)
        if self.wire in ("openai", "both"):
            app.router.add_post("/v1/chat/completions", self._chat)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path == "/stats":
            return await handler(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def __aenter__(self) -> "FakeLLMServer":
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self) -> "FakeLLMServer":
        """Serve from a background thread (for code under test that runs its own event loop or a subprocess)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.__aenter__())
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.__aexit__())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-llm-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is not None and self._thread_loop is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    # ------------------------------------------------------------------ shared helpers

    def _pick_fault(self, text: str, kinds: set[str] | None = None) -> Fault | None:
        for f in self.faults:
            if kinds is not None and f.kind not in kinds:
                continue
            if kinds is None and f.kind in BATCH_FAULTS:
                continue
            if (f.times and f.used >= f.times) or (f.match and f.match not in text):
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

    def _ratelimit_headers(self) -> dict[str, str]:
        if not self.rate_limit_rps:
            return {}
        full_in = (self.burst - self._bucket) / self.rate_limit_rps
        reset = (datetime.now(timezone.utc) + timedelta(seconds=full_in)).isoformat()
        return {"anthropic-ratelimit-requests-limit": str(int(self.burst)),
                "anthropic-ratelimit-requests-remaining": str(int(self._bucket)),
                "anthropic-ratelimit-requests-reset": reset}

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
        return text, "end"

    def _prompt_usage(self, body: dict) -> tuple[int, int, int, str]:
        """(uncached input, cache read, cache write, ttl) with the prompt cache simulated."""
        blocks = _blocks(body)
        total = sum(_tokens(b.get("text", "")) for b in blocks)
        marked = [i for i, b in enumerate(blocks) if b.get("cache_control")]
        if not marked:
            return total, 0, 0, "5m"
        cut = marked[-1] + 1
        prefix = "\x00".join(b.get("text", "") for b in blocks[:cut])
        prefix_tokens = sum(_tokens(b.get("text", "")) for b in blocks[:cut])
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

    # ------------------------------------------------------------------ Anthropic

    def _anthropic_error(self, status: int, etype: str, message: str, headers: dict | None = None,
                         details: dict | None = None) -> web.Response:
        error: dict[str, Any] = {"type": etype, "message": message}
        if details:
            error["details"] = details
        body = {"type": "error", "error": error, "request_id": self._next_id("req")}
        return web.json_response(body, status=status, headers=headers)

    def _anthropic_message(self, body: dict, fault: Fault | None, batch: bool = False) -> dict:
        text, stop = self._reply_text(body, fault)
        fresh, read, write, ttl = self._prompt_usage(body)
        content = [{"type": "text", "text": text}]
        if self.thinking_block:
            content.insert(0, {"type": "thinking", "thinking": "Let me think.", "signature": "sig"})
        stop_reason = {"end": "end_turn", "max_tokens": "max_tokens", "refusal": "refusal"}[stop]
        out_tokens = body.get("max_tokens", 1) if stop == "max_tokens" else _tokens(text)
        usage = {"input_tokens": fresh, "output_tokens": out_tokens, "cache_read_input_tokens": read,
                 "cache_creation_input_tokens": write,
                 "cache_creation": {"ephemeral_5m_input_tokens": write if ttl == "5m" else 0,
                                    "ephemeral_1h_input_tokens": write if ttl == "1h" else 0},
                 "service_tier": "batch" if batch else "standard"}
        return {"id": self._next_id("msg"), "type": "message", "role": "assistant", "model": body.get("model", ""),
                "content": content, "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}

    def _anthropic_auth(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return self._anthropic_error(401, "authentication_error", "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            return self._anthropic_error(400, "invalid_request_error", "anthropic-version header is required")
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body, raw = await self._read(request)
        denied = self._anthropic_auth(request)
        if denied is not None:
            return denied
        fault = self._pick_fault(raw)
        kind = fault.kind if fault else ""
        if kind not in ("status", "spend_limit"):  # error replies spend no rate budget; served requests do
            wait = self._take_token()
            if wait is not None:
                if fault is not None:
                    fault.used -= 1  # not served, so the fault is still due
                headers = {"retry-after": f"{wait:.3f}", **self._ratelimit_headers()}
                return self._anthropic_error(429, "rate_limit_error", "Number of requests has exceeded your rate "
                                             "limit", headers=headers)
        if kind == "status":
            headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else None
            etype = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                     404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                     529: "overloaded_error", 504: "timeout_error"}.get(fault.status, "api_error")
            return self._anthropic_error(fault.status, etype, fault.message or f"scripted {fault.status}", headers)
        if kind == "spend_limit":
            return self._anthropic_error(429, "rate_limit_error", "monthly spend limit reached",
                                         details={"error_code": "enforced_spend_limit_reached"})
        await asyncio.sleep(max(0.0, self.latency_s - (time.monotonic() - arrived)))
        headers = {"request-id": self._next_id("req"), **self._ratelimit_headers()}
        try:
            message = self._anthropic_message(body, fault)
        except Exception as e:  # noqa: BLE001 - a responder bug becomes a 500, as on a real server
            return self._anthropic_error(500, "api_error", f"responder failed: {type(e).__name__}: {e}")
        payload = _encode(message)
        self.responses_sent += 1
        if kind in ("stall", "drop", "disconnect"):
            return await self._misbehave(request, fault, payload, headers)
        return web.Response(body=payload, content_type="application/json", headers=headers)

    # ------------------------------------------------------------------ Anthropic batches

    def _batch_object(self, batch: dict) -> dict:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def _batch_create(self, request: web.Request) -> web.Response:
        body, _ = await self._read(request)
        denied = self._anthropic_auth(request)
        if denied is not None:
            return denied
        items = body.get("requests") or []
        ids = [r.get("custom_id", "") for r in items]
        bad = [i for i in ids if not CUSTOM_ID.match(i)]
        if not items or bad:
            message = f"custom_id must match {CUSTOM_ID.pattern}: {bad[:3]}" if bad else "no requests"
            return self._anthropic_error(400, "invalid_request_error", message)
        if len(set(ids)) != len(ids):
            return self._anthropic_error(400, "invalid_request_error", "custom_id values must be unique within a batch")
        fault = self._pick_fault(json.dumps(body), {"status", "drop", "disconnect"})
        if fault is not None and fault.kind == "status":
            headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else None
            message = fault.message or f"scripted {fault.status}"
            return self._anthropic_error(fault.status, "api_error", message, headers)
        if fault is not None and fault.kind == "disconnect":  # lost before the batch was made
            request.transport.close()
            return web.Response(status=500)
        now = datetime.now(timezone.utc)
        batch = {"id": self._next_id("msgbatch"), "type": "message_batch", "processing_status": "in_progress",
                 "request_counts": {"processing": len(items), "succeeded": 0, "errored": 0, "canceled": 0,
                                    "expired": 0},
                 "created_at": now.isoformat(), "expires_at": (now + timedelta(hours=24)).isoformat(),
                 "ended_at": None, "cancel_initiated_at": None, "archived_at": None, "results_url": None,
                 "_items": items, "_polls": self.batch_polls, "_results": None}
        self.batches[batch["id"]] = batch
        if fault is not None and fault.kind == "drop":  # made, but the reply is lost: the ambiguous case
            request.transport.close()
            return web.Response(status=500)
        return web.json_response(self._batch_object(batch))

    def _finish_batch(self, batch: dict, canceled: bool = False) -> None:
        results, counts = [], {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for item in batch["_items"]:
            text = json.dumps(item)
            fault = self._pick_fault(text, BATCH_FAULTS | CONTENT_FAULTS)
            kind = fault.kind if fault else ""
            if kind == "batch_missing":
                continue
            if canceled or kind == "batch_canceled":
                result: dict = {"type": "canceled"}
            elif kind == "batch_expired":
                result = {"type": "expired"}
            elif kind == "batch_errored":
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "scripted batch item error"}}}
            else:
                result = {"type": "succeeded", "message": self._anthropic_message(item["params"], fault, batch=True)}
            counts[result["type"]] += 1
            results.append({"custom_id": item["custom_id"], "result": result})
        self.rng.shuffle(results)  # the API returns results in any order
        batch.update(processing_status="ended", request_counts=counts, _results=results,
                     ended_at=datetime.now(timezone.utc).isoformat(),
                     results_url=f"{self.base_url}/v1/messages/batches/{batch['id']}/results")

    async def _batch_get(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return self._anthropic_error(404, "not_found_error", "no such batch")
        if batch["processing_status"] != "ended":
            batch["_polls"] -= 1
            if batch["_polls"] <= 0:
                self._finish_batch(batch)
        return web.json_response(self._batch_object(batch))

    async def _batch_list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", 20))
        data = [self._batch_object(b) for b in reversed(list(self.batches.values()))][:limit]
        return web.json_response({"data": data, "has_more": len(self.batches) > limit,
                                  "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})

    async def _batch_results(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return self._anthropic_error(404, "not_found_error", "no such batch")
        if batch["processing_status"] != "ended":
            return self._anthropic_error(400, "invalid_request_error", "batch has not ended yet")
        lines = "".join(json.dumps(r) + "\n" for r in batch["_results"])
        return web.Response(text=lines, content_type="application/x-jsonl")

    async def _batch_cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return self._anthropic_error(404, "not_found_error", "no such batch")
        if batch["processing_status"] != "ended":
            batch["cancel_initiated_at"] = datetime.now(timezone.utc).isoformat()
            self._finish_batch(batch, canceled=True)
        return web.json_response(self._batch_object(batch))

    # ------------------------------------------------------------------ OpenAI-compatible

    def _openai_error(self, status: int, message: str, headers: dict | None = None,
                      metadata: dict | None = None) -> web.Response:
        if self.openrouter:
            error: dict[str, Any] = {"code": status, "message": message}
            if metadata:
                error["metadata"] = metadata
        else:  # vLLM: code is the HTTP status as an integer
            error = {"message": message, "type": "BadRequestError" if status < 500 else "InternalServerError",
                     "param": None, "code": status}
        return web.json_response({"error": error}, status=status, headers=headers)

    def _logprobs(self, text: str, k: int) -> dict:
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)] or [""]
        content = []
        for j, piece in enumerate(pieces):
            top = [{"token": piece, "logprob": -0.05, "bytes": list(piece.encode())}]
            top += [{"token": f"alt{a}", "logprob": -2.0 - a - 0.01 * j, "bytes": list(f"alt{a}".encode())}
                    for a in range(1, k)]
            content.append({"token": piece, "logprob": -0.05, "bytes": list(piece.encode()), "top_logprobs": top})
        return {"content": content}

    def _prompt_logprobs(self, body: dict, k: int) -> list:
        words = " ".join(_text_of(m.get("content")) for m in body.get("messages", [])).split()
        out: list = [None]  # nothing predicts the first prompt token
        for j, w in enumerate(words[1:], start=1):
            entry = {str(1000 + j): {"logprob": -1.5, "rank": 2, "decoded_token": w}}
            for a in range(max(1, k)):
                entry[str(a)] = {"logprob": -0.5 - a, "rank": a + 1, "decoded_token": f"tok{a}"}
            out.append(entry)
        return out

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body, raw = await self._read(request)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._openai_error(401, "invalid api key")
        fault = self._pick_fault(raw)
        kind = fault.kind if fault else ""
        if kind not in ("status", "credits", "spend_limit", "in_flight_budget"):
            wait = self._take_token()
            if wait is not None:
                if fault is not None:
                    fault.used -= 1
                return self._openai_error(429, "rate limited", headers={"Retry-After": f"{wait:.3f}"})
        ra = {"Retry-After": str(fault.retry_after)} if fault and fault.retry_after is not None else None
        if kind == "status":
            return self._openai_error(fault.status, fault.message or f"scripted {fault.status}", ra)
        if kind in ("credits", "spend_limit"):
            return self._openai_error(402, "Insufficient credits", metadata={"limit_source": "openrouter_credits"})
        if kind == "in_flight_budget":
            return self._openai_error(402, "in-flight budget exhausted", ra, metadata={
                "limit_source": "openrouter_in_flight_budget", "reason": "in_flight_budget_exhausted"})
        await asyncio.sleep(max(0.0, self.latency_s - (time.monotonic() - arrived)))
        if kind == "error_200":  # an error raised mid-generation: HTTP 200, error in the body
            return web.json_response({"id": self._next_id("gen"), "model": body.get("model", ""), "error": {
                "code": 502, "message": "provider error", "metadata": {"error_type": fault.error_type}},
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "error"}]},
                headers=ra)
        try:
            text, stop = self._reply_text(body, fault)
        except Exception as e:  # noqa: BLE001
            return self._openai_error(500, f"responder failed: {type(e).__name__}: {e}")
        fresh, read, write, _ = self._prompt_usage(body)
        finish = {"end": "stop", "max_tokens": "length", "refusal": "content_filter"}[stop]
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish}
        if body.get("logprobs"):
            choice["logprobs"] = self._logprobs(text, int(body.get("top_logprobs") or 1))
        completion = _tokens(text)
        usage: dict[str, Any] = {"prompt_tokens": fresh + read + write, "completion_tokens": completion,
                                 "total_tokens": fresh + read + write + completion,
                                 "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write}}
        if self.openrouter:
            usage["cost"] = round((fresh + read + write) * 1e-6 + completion * 5e-6, 9)
        reply: dict[str, Any] = {"id": self._next_id("chatcmpl"), "object": "chat.completion",
                                 "created": int(time.time()), "model": body.get("model", ""), "choices": [choice],
                                 "usage": usage}
        if body.get("prompt_logprobs"):
            reply["prompt_logprobs"] = self._prompt_logprobs(body, int(body["prompt_logprobs"]))
        payload = _encode(reply)
        headers = {"x-generation-id": reply["id"]}
        self.responses_sent += 1
        if kind in ("stall", "drop", "disconnect"):
            return await self._misbehave(request, fault, payload, headers)
        return web.Response(body=payload, content_type="application/json", headers=headers)


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m clients.fake_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 = any free port)")
    p.add_argument("--wire", choices=["anthropic", "openai", "both"], default="both", help="routes to serve")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    p.add_argument("--rate-limit", type=float, default=None, help="requests/s allowed (429 beyond)")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of requests given a random fault")
    p.add_argument("--api-key", default=None, help="require this key (default: accept any)")
    p.add_argument("--openrouter", action="store_true", help="OpenRouter-shaped errors and usage.cost")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    server = FakeLLMServer(faults=fault_mix(a.fault_rate) if a.fault_rate else None, latency_s=a.latency,
                           rate_limit_rps=a.rate_limit, api_key=a.api_key, openrouter=a.openrouter, wire=a.wire,
                           port=a.port, seed=a.seed)

    async def serve() -> None:
        async with server:
            hint = {"anthropic": f"{server.base_url}  (make_client('anthropic', ..., base_url=...))",
                    "openai": f"{server.base_url}/v1  (make_client('openai-compatible', ..., base_url=...))"}
            for w in (["anthropic", "openai"] if a.wire == "both" else [a.wire]):
                print(f"fake LLM server [{w}] on {hint[w]}", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
