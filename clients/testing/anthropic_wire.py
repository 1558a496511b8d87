"""The Anthropic Messages route of the fake provider server (POST /v1/messages).

Anthropic-shaped replies, errors (type + message, request_id), auth
(x-api-key, anthropic-version), rate-limit headers and usage with cache
read/creation counts; `AnthropicMessages` adds them to the shared simulation.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from clients.structured import anthropic_refusals
from clients.testing.faults import Fault
from clients.testing.simulation import ProviderSimulation, approx_tokens, encode


def rejection(field: str) -> str:
    """The 400 message of a model that refuses `field` (the wording of Claude 4.7's refusal of temperature)."""
    return f"`{field}` is deprecated for this model."


class AnthropicMessages(ProviderSimulation):
    """Anthropic Messages on top of the shared simulation."""

    def _ratelimit_headers(self) -> dict[str, str]:
        if not self.rate_limit_rps:
            return {}
        full_in = (self.burst - self._bucket) / self.rate_limit_rps
        reset = (datetime.now(timezone.utc) + timedelta(seconds=full_in)).isoformat()
        return {"anthropic-ratelimit-requests-limit": str(int(self.burst)),
                "anthropic-ratelimit-requests-remaining": str(int(self._bucket)),
                "anthropic-ratelimit-requests-reset": reset}

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
        out_tokens = body.get("max_tokens", 1) if stop == "max_tokens" else approx_tokens(text)
        usage = {"input_tokens": fresh, "output_tokens": out_tokens, "cache_read_input_tokens": read,
                 "cache_creation_input_tokens": write,
                 "cache_creation": {"ephemeral_5m_input_tokens": write if ttl == "5m" else 0,
                                    "ephemeral_1h_input_tokens": write if ttl == "1h" else 0},
                 "service_tier": "batch" if batch else "standard"}
        return {"id": self._next_id("msg"), "type": "message", "role": "assistant", "model": body.get("model", ""),
                "content": content, "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}

    def _schema_refusal(self, body: dict) -> str | None:
        """The API's 400 for an output schema using keywords it does not support (maxItems, maxLength, ...)."""
        schema = ((body.get("output_config") or {}).get("format") or {}).get("schema")
        bad = anthropic_refusals(schema)
        return f"output_config.format.schema: {', '.join(sorted(set(bad)))} not supported" if bad else None

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
            headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else {}
            headers.update(fault.headers)
            etype = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                     404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
                     529: "overloaded_error", 504: "timeout_error"}.get(fault.status, "api_error")
            return self._anthropic_error(fault.status, etype, fault.message or f"scripted {fault.status}", headers)
        if kind == "spend_limit":
            return self._anthropic_error(429, "rate_limit_error", "monthly spend limit reached",
                                         details={"error_code": "enforced_spend_limit_reached"})
        rejected = self._rejected_field(body)
        if rejected is not None:
            return self._anthropic_error(400, "invalid_request_error", rejection(rejected))
        refused = self._schema_refusal(body)
        if refused is not None:
            return self._anthropic_error(400, "invalid_request_error", refused)
        await self._compute(arrived)
        headers = {"request-id": self._next_id("req"), **self._ratelimit_headers()}
        try:
            message = self._anthropic_message(body, fault)
        except Exception as e:  # noqa: BLE001 - a responder bug becomes a 500, as on a real server
            return self._anthropic_error(500, "api_error", f"responder failed: {type(e).__name__}: {e}")
        payload = encode(message)
        self.responses_sent += 1
        if kind in ("stall", "drop", "disconnect"):
            return await self._misbehave(request, fault, payload, headers)
        return web.Response(body=payload, content_type="application/json", headers=headers)
