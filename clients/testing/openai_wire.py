"""The OpenAI-compatible route of the fake provider server (POST /v1/chat/completions).

vLLM- or OpenRouter-shaped (`openrouter=True`) errors, usage with cached
tokens (and OpenRouter's usage.cost), HTTP-200 errors mid-generation, and
token / prompt logprobs (prompt_logprobs is vLLM's extension).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from clients.testing.simulation import ProviderSimulation, approx_tokens, encode


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict))


class OpenAIChat(ProviderSimulation):
    """OpenAI-compatible chat completions on top of the shared simulation."""

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

    def _refusal(self, body: dict) -> web.Response | None:
        """A field this model refuses (400), or llama_cpp.server's 500 for response_format json_schema."""
        rejected = self._rejected_field(body)
        if rejected is not None:
            return self._openai_error(400, f"Unsupported parameter: '{rejected}' is not supported with this model.")
        if self.llama_cpp and (body.get("response_format") or {}).get("type") not in (None, "text", "json_object"):
            # llama_cpp.server 0.3.x: pydantic's literal check, raised as a 500
            return self._openai_error(500, "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n"
                                      "  Input should be 'text' or 'json_object' [type=literal_error]")
        return None

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
            return self._openai_error(fault.status, fault.message or f"scripted {fault.status}",
                                      {**(ra or {}), **fault.headers})
        if kind in ("credits", "spend_limit"):
            return self._openai_error(402, "Insufficient credits", metadata={"limit_source": "openrouter_credits"})
        if kind == "in_flight_budget":
            return self._openai_error(402, "in-flight budget exhausted", ra, metadata={
                "limit_source": "openrouter_in_flight_budget", "reason": "in_flight_budget_exhausted"})
        refused = self._refusal(body)
        if refused is not None:
            return refused
        await self._compute(arrived)
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
        completion = approx_tokens(text)
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
        payload = encode(reply)
        headers = {"x-generation-id": reply["id"]}
        self.responses_sent += 1
        if kind in ("stall", "drop", "disconnect"):
            return await self._misbehave(request, fault, payload, headers)
        return web.Response(body=payload, content_type="application/json", headers=headers)
