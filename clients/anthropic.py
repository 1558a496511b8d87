"""Anthropic Messages API (`POST /v1/messages`): request body and reply classification.

Body layout, so that everything shared is cached once and read at 10 % price:
  system   [text block, cache_control]             instructions shared by all requests
  messages [user: prefix block (cache_control), prompt block]
  output_config.format = {type: json_schema, schema}  when a schema is given
`temperature` is sent only to models that take it (clients.capabilities: Claude
from 4.7 on rejects sampling parameters with a 400); a 400 naming a sampling
field teaches the client to drop it, and the request is rebuilt and resent.
Anthropic returns no logprobs: asking for them is a configuration error.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import msgspec

from clients.backoff import account_exhausted, retry_after_s
from clients.base import CompletionRequest, CompletionResponse, StopReason
from clients.capabilities import CapabilityStore, refused_field
from clients.config import ModelPrice, Prices
from clients.errors import ClientConfigError
from clients.keys import Secret, redact
from clients.structured import UNDECODABLE, anthropic_schema, decode_output
from clients.usage import Usage
from clients.verdict import Verdict, http_verdict

API_VERSION = "2023-06-01"

STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end", "stop_sequence": "end", "tool_use": "end", "pause_turn": "end",
    "max_tokens": "max_tokens", "model_context_window_exceeded": "max_tokens", "refusal": "refusal",
}


class _CacheCreation(msgspec.Struct):
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0
    cache_creation: _CacheCreation | None = None
    service_tier: str | None = None


class _Block(msgspec.Struct):
    type: str
    text: str = ""


class Message(msgspec.Struct):
    """The subset of a Messages API reply that we read (unknown fields are ignored)."""

    content: list[_Block] = []
    stop_reason: str | None = None
    model: str = ""
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _ErrorInner(msgspec.Struct):
    type: str = ""
    message: str = ""
    details: dict | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorInner = msgspec.field(default_factory=_ErrorInner)
    request_id: str = ""


_decode_message = msgspec.json.Decoder(Message).decode
_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class AnthropicWire:
    def __init__(self, model: str, base_url: str, key: Secret | None, prices: Prices, cache_ttl: str = "5m",
                 caps: CapabilityStore | None = None):
        if cache_ttl not in ("5m", "1h"):
            raise ClientConfigError(f"cache_ttl must be '5m' or '1h', got {cache_ttl!r}")
        self.model = model
        self.url = base_url.rstrip("/") + "/v1/messages"
        self._key = key
        self.prices = prices
        self.price: ModelPrice | None = prices.lookup(model)
        self.cache_ttl = cache_ttl
        self.caps = caps or CapabilityStore(model)

    def session_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._key is not None:
            headers["x-api-key"] = self._key.value
        return headers

    # ------------------------------------------------------------------ request

    def body(self, request: CompletionRequest) -> dict:
        if request.logprobs or request.prompt_logprobs:
            raise ClientConfigError("Anthropic models return no logprobs: use an openai-compatible server (vLLM) for "
                                    "logprob-based scoring, or set logprobs=0")
        return params_body(request, self.model, self.cache_ttl, self.caps.caps.drop)

    def estimate_usd(self, request: CompletionRequest, payload_bytes: int) -> float:
        if self.price is None:
            return 0.0
        # ~3 bytes per token is a pessimistic tokenizer estimate; output at its ceiling
        return self.price.cost(payload_bytes // 3, request.max_tokens)

    # ------------------------------------------------------------------ reply

    def interpret(self, request: CompletionRequest, status: int, headers: Mapping[str, str], raw: bytes,
                  sent: dict | None = None) -> Verdict:
        request_id = headers.get("request-id", "")
        if status == 200:
            try:
                message = _decode_message(raw)
            except UNDECODABLE as e:  # cut-off or garbled body: transport trouble
                return Verdict(kind="retry", error="connection", health="failed", detail=f"bad JSON body: {e}",
                               request_id=request_id)
            return Verdict(kind="done", response=self.response(request, message))
        try:
            err = _decode_error(raw)
        except UNDECODABLE:  # e.g. a Cloudflare HTML page for 413
            err = _ErrorBody()
        # redact before cutting: a cut key would no longer match, and half of it would reach the log
        detail = f"{status} {err.error.type}: {err.error.message or redact(raw.decode('utf-8', 'replace'))[:200]}"
        retry_after = retry_after_s(headers)
        if status == 429 and (err.error.details or {}).get("error_code") == "enforced_spend_limit_reached":
            return Verdict(kind="fatal", error="spend_limit", health="neutral", detail=detail, request_id=request_id)
        if status == 402:
            return Verdict(kind="fatal", error="spend_limit", health="neutral", detail=detail, request_id=request_id)
        field = refused_field(err.error.message, {"temperature": 0}) if status == 400 else None
        if field is not None:  # learned (or learned by another request meanwhile): rebuild without it
            self.caps.learn_drop(field)
            return Verdict(kind="resend", error="http_400", health="neutral", detail=detail, request_id=request_id)
        return http_verdict(status, retry_after, detail, err.request_id or request_id, account_exhausted(headers))

    def response(self, request: CompletionRequest, message: Message, batch: bool = False) -> CompletionResponse:
        """A CompletionResponse from a Messages reply (also used for Message Batches results)."""
        text = "".join(b.text for b in message.content if b.type == "text")
        stop = STOP_REASONS.get(message.stop_reason or "", "end")
        usage = self.usage(message.usage, batch)
        parsed, error = None, None
        if stop == "refusal":
            error = "refusal"
        elif stop == "max_tokens":
            error = "truncated"  # never decode cut-off JSON: a partial object can look valid
        elif request.schema is not None:
            value, error = decode_output(text, request.schema)
            parsed = value if error is None else None
        return CompletionResponse(custom_id=request.custom_id, text=text, parsed=parsed, stop_reason=stop,
                                  usage=usage, model=message.model or self.model, error=error)

    def usage(self, u: _Usage, batch: bool = False) -> Usage:
        read = u.cache_read_input_tokens or 0
        write = u.cache_creation_input_tokens or 0
        if u.cache_creation is not None:
            w5, w1 = u.cache_creation.ephemeral_5m_input_tokens, u.cache_creation.ephemeral_1h_input_tokens
        else:
            w5, w1 = (write, 0) if self.cache_ttl == "5m" else (0, write)
        cost = 0.0
        if self.price is not None:
            cost = self.price.cost(u.input_tokens, u.output_tokens, read, w5, w1,
                                   batch=batch or u.service_tier == "batch",
                                   batch_discount=self.prices.batch_discount)
        return Usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens, cache_read_input_tokens=read,
                     cache_creation_input_tokens=write, cost_usd=cost)


def params_body(request: CompletionRequest, model: str, cache_ttl: str = "5m", drop: Collection[str] = ()) -> dict:
    """Messages API params for one request (the `params` of a batch entry too), without the fields in `drop`."""
    cache = {"type": "ephemeral"} if cache_ttl == "5m" else {"type": "ephemeral", "ttl": cache_ttl}
    content = []
    if request.prefix:
        content.append({"type": "text", "text": request.prefix, "cache_control": cache})
    if request.prompt or not content:  # the API rejects empty text blocks
        content.append({"type": "text", "text": request.prompt})
    body: dict = {"model": model, "max_tokens": request.max_tokens,
                  "messages": [{"role": "user", "content": content}]}
    if request.system:
        body["system"] = [{"type": "text", "text": request.system, "cache_control": cache}]
    if request.schema is not None:
        body["output_config"] = {"format": {"type": "json_schema", "schema": anthropic_schema(request.schema)}}
    if "temperature" not in drop:
        body["temperature"] = request.temperature
    return body
