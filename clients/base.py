"""What every client takes and returns, whatever the provider.

A client turns one `CompletionRequest` into one `CompletionResponse` and never
raises for a per-request failure: the response's `error` names what went wrong
with a fixed vocabulary (ERROR_CODES), so callers can count, retry or fall back
per item. Only programming errors and bad configuration raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

from clients.usage import Usage

if TYPE_CHECKING:
    from clients.ledger import CostLedger


class CompletionRequest(msgspec.Struct, kw_only=True):
    """One chat completion: shared instructions and prefix first (cacheable), then the item."""

    custom_id: str
    "Stable id, e.g. 'explain:blocks.2.hook_resid_post/17'; the response carries it back."
    prompt: str
    "Per-item user content."
    system: str = ""
    "Instructions shared by all requests (sent as the system prompt, marked cacheable)."
    prefix: str = ""
    "User-turn text shared across requests, placed before `prompt` and marked cacheable."
    max_tokens: int = 512
    "Output ceiling (thinking included on reasoning models)."
    temperature: float = 0.0
    "Sampling temperature; dropped for Anthropic models that reject it."
    schema: dict | None = None
    "JSON schema (clients.structured.provider_schema(T)) -> structured output, decoded into `parsed`."
    schema_name: str = "output"
    "Name of the schema (OpenAI-compatible `json_schema.name`)."
    logprobs: int = 0
    "Top alternatives wanted per output token (OpenAI-compatible only; 0 = off)."
    prompt_logprobs: int = 0
    "Top alternatives per *prompt* token (vLLM only; 0 = off)."


StopReason = Literal["end", "max_tokens", "refusal", "error"]


class CompletionResponse(msgspec.Struct, kw_only=True):
    """The outcome of one request: text and parsed output, or a classified error."""

    custom_id: str
    text: str
    "Raw assistant text ('' on failure)."
    parsed: dict | None
    "Decoded output when a schema was given and the reply is valid JSON of that shape."
    stop_reason: StopReason
    usage: Usage
    "Tokens incl. cache read/write; cost_usd from the price table (or the provider's own figure)."
    model: str
    logprobs: list[list[tuple[str, float]]] | None = None
    "Per generated token: its top alternatives (token, logprob), most likely first."
    prompt_logprobs: list[list[tuple[str, float]]] | None = None
    "Per prompt token (vLLM): its top alternatives; the first entry is [] (nothing predicts token 0)."
    error: str | None = None
    "One of ERROR_CODES (None on success)."
    attempts: int = 1
    "HTTP attempts made (0 when the request was refused before sending)."


ERROR_CODES = {
    # results: the call succeeded but the output is not usable
    "refusal": "the model refused (stop_reason refusal / content_filter)",
    "truncated": "output cut off by max_tokens or the context window",
    "invalid_json": "a schema was requested but the text is not JSON",
    "schema_mismatch": "valid JSON that does not match the schema",
    "provider_error": "the provider reported a non-retryable error inside a 200 response",
    # HTTP failures that are never retried
    "http_400": "bad request (also a spend limit you set on Anthropic)",
    "http_401": "bad or missing API key (stops the client)",
    "http_402": "payment required",
    "http_403": "permission denied / moderation (stops the client)",
    "http_404": "unknown model or route",
    "http_413": "request too large",
    "http_422": "unprocessable request",
    "spend_limit": "monthly spend cap or credits exhausted (stops the client)",
    "unsupported_request": "the server refuses a parameter or format the request needs, in every shape the client "
                           "knows (its message says which; structured output refused stops the client)",
    # retryable failures, after the last attempt
    "rate_limited": "429 until attempts ran out, or retry-after above the cap",
    "overloaded": "529 until attempts ran out",
    "server_error": "5xx until attempts ran out",
    "timeout": "connect or read timeout until attempts ran out",
    "connection": "connection refused or dropped until attempts ran out",
    # refused locally, nothing sent
    "circuit_open": "not sent: the server kept failing past the breaker's outage window (the client stopped)",
    "budget_exceeded": "max_cost reached",
    # batches
    "canceled": "batch request canceled",
    "expired": "batch request expired before it ran",
    "missing_result": "the batch ended without a (readable) result line for this request",
}


class Client(Protocol):
    ledger: CostLedger
    max_concurrent: int
    "Most requests on the wire at once (run_requests keeps a few times more pending)."

    async def complete(self, request: CompletionRequest) -> CompletionResponse: ...

    async def aclose(self) -> None: ...


def failed(request: CompletionRequest, model: str, error: str, attempts: int,
           usage: Usage | None = None) -> CompletionResponse:
    """The response for a request that produced no usable output."""
    return CompletionResponse(custom_id=request.custom_id, text="", parsed=None, stop_reason="error",
                              usage=usage or Usage(), model=model, error=error, attempts=attempts)
