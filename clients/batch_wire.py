"""The Message Batches API's reply shapes (batch objects, listings, JSONL result lines, error bodies).

Only the fields `clients.anthropic_batches` reads; unknown fields are ignored.
`shaped` turns a decoded 200 body into one of them, or a one-line error.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from clients.anthropic import Message
from clients.errors import ClientConfigError

ERROR_TYPES = {
    "invalid_request_error": "http_400", "authentication_error": "http_401", "billing_error": "http_402",
    "permission_error": "http_403", "not_found_error": "http_404", "request_too_large": "http_413",
    "rate_limit_error": "rate_limited", "api_error": "server_error", "overloaded_error": "overloaded",
    "timeout_error": "timeout",
}


class BatchObject(msgspec.Struct):
    id: str
    processing_status: str
    request_counts: dict[str, int] = {}
    created_at: str = ""
    results_url: str | None = None


class BatchList(msgspec.Struct):
    data: list[BatchObject] = []


class ErrorInner(msgspec.Struct):
    type: str = ""
    message: str = ""


class ErrorBody(msgspec.Struct):
    error: ErrorInner = msgspec.field(default_factory=ErrorInner)


class Result(msgspec.Struct):
    type: str
    message: Message | None = None
    error: ErrorBody | None = None


class ResultLine(msgspec.Struct):
    custom_id: str
    result: Result


def shaped(data, type_):
    """A decoded 200 body as `type_`; a body of another shape is a one-line error, not a traceback."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as e:
        raise ClientConfigError(f"the Message Batches API answered with an unexpected body ({e}) -- check "
                                "--base-url points at the Anthropic API; rerun to resume (submitted batches are in "
                                "the state file)") from None


def unix_time(rfc3339: str) -> float:
    try:
        return datetime.fromisoformat(rfc3339).timestamp()
    except ValueError:
        return 0.0
