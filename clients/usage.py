"""The token and dollar count of one LLM request (`Usage`), as the clients report it.

A plain msgspec Struct with no other dependency, so the engine can store it in
its records (`Explanation.usage`, `ScoreResult.usage`) without importing the
HTTP side of the clients.
"""

from __future__ import annotations

import msgspec


class Usage(msgspec.Struct):
    """Tokens billed for one LLM request, and their price."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: float = 0.0
