"""API keys: read from the environment, never printed, whole or in part.

A key lives only in the request headers of its client's session. Any text
that came from a server (error bodies can echo credentials, or a prefix of
them) goes through `redact` before it reaches a log line, an exception or a
result: every run of 8 or more characters that also occurs in a key is
replaced by '***'. The "clients" logger carries `RedactFilter`, so a log
line is redacted even where a caller forgot.
"""

from __future__ import annotations

import logging
import os

from clients.errors import ClientConfigError

MIN_PIECE = 8
"Shortest piece of a key that is redacted: shorter runs would match ordinary words."
_SECRETS: set[str] = set()
_GRAMS: set[str] = set()  # every MIN_PIECE-character substring of every key


class Secret:
    """A string that shows as '***' in repr/str/f-strings; `.value` gives the key itself."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value
        if len(value) >= MIN_PIECE and value not in _SECRETS:
            _SECRETS.add(value)
            _GRAMS.update(value[i : i + MIN_PIECE] for i in range(len(value) - MIN_PIECE + 1))

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def read_key(env_var: str, required: bool) -> Secret | None:
    """The key in `env_var`; a one-line ClientConfigError naming the variable when it is required and unset."""
    value = os.environ.get(env_var, "").strip()
    if not value:
        if required:
            raise ClientConfigError(f"API key missing: set the environment variable {env_var} "
                                    f"(e.g. `export {env_var}=...`)")
        return None
    return Secret(value)


def redact(text: str) -> str:
    """`text` with every run of >= 8 characters shared with a key this process has read replaced by '***'.

    A character is covered when some 8-character window holding it is a substring of a key; each maximal
    covered span becomes one '***'. Any piece of a key of length >= 8 is covered entirely (its windows are
    all substrings of the key), so a server echoing a prefix, a suffix or a cut key leaks nothing."""
    if not _GRAMS or len(text) < MIN_PIECE:
        return text
    n = len(text)
    cover_end = -1  # covered characters so far end before this index
    spans: list[list[int]] = []
    for i in range(n - MIN_PIECE + 1):
        if text[i : i + MIN_PIECE] in _GRAMS:
            if spans and i <= cover_end:
                spans[-1][1] = i + MIN_PIECE
            else:
                spans.append([i, i + MIN_PIECE])
            cover_end = i + MIN_PIECE
    if not spans:
        return text
    out, at = [], 0
    for lo, hi in spans:
        out += [text[at:lo], "***"]
        at = hi
    out.append(text[at:])
    return "".join(out)


def redact_value(value):
    """`redact` applied to every string inside a decoded JSON value (dicts, lists)."""
    if not _GRAMS:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_value(v) for k, v in value.items()}
    return value


class RedactFilter(logging.Filter):
    """Redacts a log record's formatted message (msg % args), then drops the args."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _GRAMS:
            record.msg, record.args = redact(record.getMessage()), None
        return True


logging.getLogger("clients").addFilter(RedactFilter())
