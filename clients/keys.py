"""API keys: read from the environment, never printed.

A key lives only in the request headers of its client's session. Any text
that came from a server (error bodies can echo credentials) goes through
`redact` before it reaches a log line or an exception.
"""

from __future__ import annotations

import os

from clients.errors import ClientConfigError

_SECRETS: set[str] = set()


class Secret:
    """A string that shows as '***' in repr/str/f-strings; `.value` gives the key itself."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value
        if len(value) >= 8:  # shorter strings would redact ordinary words
            _SECRETS.add(value)

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
    """`text` with every key this process has read replaced by '***'."""
    for s in _SECRETS:
        if s in text:
            text = text.replace(s, "***")
    return text
