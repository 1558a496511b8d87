"""OpenAI-compatible chat completions (`POST {base}/chat/completions`): OpenRouter, vLLM, llama.cpp.

Body: system message, then one user message holding `prefix` and `prompt`
(as two text parts on OpenRouter, the prefix part carrying `cache_control`
for Anthropic models behind it; as one string joined by a blank line on local
servers). Structured output uses `response_format: {type: json_schema,
json_schema: {name, strict, schema}}` (vLLM >= 0.12 and llama.cpp both read
it; the removed vLLM `guided_json` field is never sent, as vLLM would ignore
it silently), or `{type: json_object, schema}` for servers that refuse
json_schema (llama_cpp.server answers a 500 naming response_format): the
shape is learned from the first refusal, once per client and model, and
persisted (clients.capabilities). A 400/422/500 naming a field we sent as
unsupported (a sampling field: dropped and resent; logprobs: not retried;
both structured-output shapes refused: `unsupported_request`, which stops
the client with the server's message) is never retried as a server error.
On OpenRouter, `provider.require_parameters` keeps requests
away from providers that would silently drop the schema or logprobs.

Replies that are failures although the status is 200 (OpenRouter errors
raised mid-generation: a top-level `error`, or `finish_reason: error`) are
classified by `error.metadata.error_type`. A 402 is transient only when
OpenRouter's in-flight budget is the limit; out of credits stops the client.
Usage: `input_tokens` is the uncached part of `prompt_tokens`, as on
Anthropic; cost is OpenRouter's own `usage.cost` when present, else the
price table (0 for a model without a price, e.g. a local one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from clients.backoff import account_exhausted, retry_after_s
from clients.base import CompletionRequest, CompletionResponse, StopReason
from clients.capabilities import SAMPLING, CapabilityStore, refused_field, refuses_format
from clients.config import ModelPrice, Prices
from clients.errors import ClientConfigError
from clients.keys import Secret, redact
from clients.structured import UNDECODABLE, decode_output
from clients.usage import Usage
from clients.verdict import Verdict, http_verdict

FINISH_REASONS: dict[str, StopReason] = {
    "stop": "end", "tool_calls": "end", "function_call": "end", "eos": "end",
    "length": "max_tokens", "content_filter": "refusal", "error": "error",
}
RETRYABLE_200 = {  # OpenRouter error.metadata.error_type -> our code
    "rate_limit_exceeded": "rate_limited", "provider_overloaded": "overloaded",
    "provider_unavailable": "server_error", "server": "server_error", "timeout": "timeout",
}


class _Top(msgspec.Struct):
    token: str
    logprob: float


class _TokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    top_logprobs: list[_Top] | None = None


class _Logprobs(msgspec.Struct):
    content: list[_TokenLogprob] | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None


class _Error(msgspec.Struct):
    code: int | str | None = None
    message: str = ""
    type: str | None = None
    metadata: dict[str, Any] | None = None


class _Choice(msgspec.Struct):
    message: _Message = msgspec.field(default_factory=_Message)
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None
    error: _Error | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = 0
    cache_write_tokens: int | None = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    cost: float | None = None


class _PromptLogprob(msgspec.Struct):
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class ChatCompletion(msgspec.Struct):
    """The subset of a chat completion (or an error body) that we read."""

    choices: list[_Choice] = []
    usage: _Usage | None = None
    model: str = ""
    error: _Error | None = None
    prompt_logprobs: list[dict[str, _PromptLogprob] | None] | None = None


class _ErrorBody(msgspec.Struct):
    error: _Error | None = None
    message: str = ""  # older vLLM: {object: "error", message, type, code}
    detail: Any = None  # FastAPI validation errors


_decode = msgspec.json.Decoder(ChatCompletion).decode
_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class OpenAIWire:
    def __init__(self, model: str, base_url: str, key: Secret | None, prices: Prices, openrouter: bool = False,
                 caps: CapabilityStore | None = None):
        self.model = model
        self.caps = caps or CapabilityStore(model)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._key = key
        self.price: ModelPrice | None = prices.lookup(model)
        self.openrouter = openrouter

    def session_headers(self) -> dict[str, str]:
        headers = {}
        if self._key is not None:
            headers["Authorization"] = "Bearer " + self._key.value
        if self.openrouter:
            headers["X-OpenRouter-Title"] = "autointerp-engine"
        return headers

    # ------------------------------------------------------------------ request

    def body(self, request: CompletionRequest) -> dict:
        messages: list[dict] = []
        if self.openrouter:
            if request.system:
                messages.append({"role": "system", "content": [
                    {"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}]})
            parts = []
            if request.prefix:
                parts.append({"type": "text", "text": request.prefix, "cache_control": {"type": "ephemeral"}})
            if request.prompt or not parts:
                parts.append({"type": "text", "text": request.prompt})
            messages.append({"role": "user", "content": parts})
        else:
            if request.system:
                messages.append({"role": "system", "content": request.system})
            user = "\n\n".join(t for t in (request.prefix, request.prompt) if t)
            messages.append({"role": "user", "content": user})
        body: dict = {"model": self.model, "messages": messages, "max_tokens": request.max_tokens}
        if not self.caps.drops("temperature"):
            body["temperature"] = request.temperature
        if request.schema is not None:
            if self.caps.caps.response_format == "json_object":  # llama.cpp's shape
                body["response_format"] = {"type": "json_object", "schema": request.schema}
            else:
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": request.schema_name, "strict": True, "schema": request.schema}}
        if request.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = request.logprobs
        if request.prompt_logprobs:
            if self.openrouter:
                raise ClientConfigError("prompt_logprobs is a vLLM extension; OpenRouter does not offer it")
            body["prompt_logprobs"] = request.prompt_logprobs
        if self.openrouter and (request.schema is not None or request.logprobs):
            body["provider"] = {"require_parameters": True}
        return body

    def estimate_usd(self, request: CompletionRequest, payload_bytes: int) -> float:
        return 0.0 if self.price is None else self.price.cost(payload_bytes // 3, request.max_tokens)

    # ------------------------------------------------------------------ reply

    def interpret(self, request: CompletionRequest, status: int, headers: Mapping[str, str], raw: bytes,
                  sent: dict | None = None) -> Verdict:
        """The verdict on one reply; `sent` is the body that was sent (default: the body built now)."""
        request_id = headers.get("x-generation-id", "") or headers.get("x-request-id", "")
        retry_after = retry_after_s(headers)
        if status != 200:
            verdict = self._error_status(status, raw, retry_after, request_id, account_exhausted(headers))
            return self._refused(verdict, status, sent if sent is not None else self.body(request))
        try:
            reply = _decode(raw)
        except UNDECODABLE as e:
            return Verdict(kind="retry", error="connection", health="failed", detail=f"bad JSON body: {e}",
                           request_id=request_id)
        usage = self.usage(reply.usage)
        choice = reply.choices[0] if reply.choices else None
        error = reply.error or (choice.error if choice else None)
        if error is not None or choice is None or choice.finish_reason == "error":
            error_type = str(((error.metadata if error else None) or {}).get("error_type", ""))
            detail = f"200 with error {error_type or '?'}: {error.message if error else 'no choices'}"
            code = RETRYABLE_200.get(error_type)
            if code is not None:
                return Verdict(kind="retry", error=code, health="neutral" if code == "rate_limited" else "failed",
                               overload=code == "overloaded", retry_after=retry_after, usage=usage, detail=detail,
                               request_id=request_id)
            return Verdict(kind="fail", error="provider_error", health="neutral", usage=usage, detail=detail,
                           request_id=request_id)
        return Verdict(kind="done", response=self.response(request, reply, choice, usage))

    def _refused(self, verdict: Verdict, status: int, sent: dict) -> Verdict:
        """A 400/422/500 that names something we sent as unsupported: resend without it, or stop retrying."""
        if status not in (400, 422, 500) or verdict.kind == "fatal":
            return verdict
        message = verdict.detail
        fmt = (sent.get("response_format") or {}).get("type")
        field = refused_field(message, {k: v for k, v in sent.items() if k in SAMPLING})
        if field is not None:
            self.caps.learn_drop(field)
            return msgspec.structs.replace(verdict, kind="resend", health="neutral")
        if fmt is not None and refuses_format(message):
            if self.caps.learn_format_refused(fmt):
                return msgspec.structs.replace(verdict, kind="resend", health="neutral")
            return msgspec.structs.replace(verdict, kind="fatal", error="unsupported_request", health="neutral",
                                           overload=False)
        if ("logprobs" in sent or "prompt_logprobs" in sent) and "logprob" in message and status == 500:
            return msgspec.structs.replace(verdict, kind="fail", error="unsupported_request", health="neutral",
                                           overload=False)
        return verdict

    def _error_status(self, status: int, raw: bytes, retry_after: float | None, request_id: str,
                      account_limited: bool = False) -> Verdict:
        try:
            body = _decode_error(raw)
        except UNDECODABLE:
            body = _ErrorBody()
        # redact before cutting: a cut key would no longer match, and half of it would reach the log
        fallback = body.message or str(body.detail or redact(raw.decode("utf-8", "replace"))[:200])
        err = body.error or _Error(message=fallback)
        meta = err.metadata or {}
        detail = f"{status}: {err.message}"
        if status == 402:
            if meta.get("limit_source") == "openrouter_in_flight_budget" or "in_flight" in str(meta.get("reason", "")):
                return Verdict(kind="retry", error="rate_limited", health="neutral", retry_after=retry_after,
                               detail=detail, request_id=request_id)
            return Verdict(kind="fatal", error="spend_limit", health="neutral", detail=detail, request_id=request_id)
        return http_verdict(status, retry_after, detail, request_id, account_limited)

    def response(self, request: CompletionRequest, reply: ChatCompletion, choice: _Choice,
                 usage: Usage) -> CompletionResponse:
        text = choice.message.content or ""
        stop = FINISH_REASONS.get(choice.finish_reason or "stop", "end")
        if choice.message.refusal:
            stop, text = "refusal", text or choice.message.refusal
        parsed, error = None, None
        if stop == "refusal":
            error = "refusal"
        elif stop == "max_tokens":
            error = "truncated"
        elif request.schema is not None:
            value, error = decode_output(text, request.schema)
            parsed = value if error is None else None
        logprobs = None
        if choice.logprobs is not None and choice.logprobs.content is not None:
            logprobs = [generated_first(tok) for tok in choice.logprobs.content]
        prompt_logprobs = None
        if reply.prompt_logprobs is not None:
            # vLLM: one entry per prompt token, the first null; each maps token id (a string) to
            # {logprob, rank, decoded_token}; listed here most likely first
            prompt_logprobs = [[] if entry is None else _ranked(entry) for entry in reply.prompt_logprobs]
        return CompletionResponse(custom_id=request.custom_id, text=text, parsed=parsed, stop_reason=stop, usage=usage,
                                  model=reply.model or self.model, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                                  error=error)

    def usage(self, u: _Usage | None) -> Usage:
        if u is None:
            return Usage()
        details = u.prompt_tokens_details or _PromptDetails()
        read, write = details.cached_tokens or 0, details.cache_write_tokens or 0
        fresh = max(0, u.prompt_tokens - read - write)
        if u.cost is not None:
            cost = u.cost
        elif self.price is not None:
            cost = self.price.cost(fresh, u.completion_tokens, read, write)
        else:
            cost = 0.0
        return Usage(input_tokens=fresh, output_tokens=u.completion_tokens, cache_read_input_tokens=read,
                     cache_creation_input_tokens=write, cost_usd=cost)


def generated_first(tok: _TokenLogprob) -> list[tuple[str, float]]:
    """One generated position: the token generated first, then the other alternatives, most likely first.
    Readers take alternatives[0] as what was generated; a grammar-constrained server (llama.cpp) lists
    top_logprobs from the logits before the grammar, so the token it sampled may rank lower, or be absent."""
    rest = [(t.token, t.logprob) for t in tok.top_logprobs or () if t.token != tok.token]
    return [(tok.token, tok.logprob), *sorted(rest, key=lambda x: -x[1])]


def _ranked(entry: dict[str, _PromptLogprob]) -> list[tuple[str, float]]:
    items = sorted(entry.items(), key=lambda kv: (kv[1].rank is None, kv[1].rank or 0, -kv[1].logprob))
    return [(lp.decoded_token if lp.decoded_token is not None else tid, lp.logprob) for tid, lp in items]
