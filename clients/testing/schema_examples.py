"""Canned reply content for the fake provider server: a valid example value for a JSON schema.

`example_for_schema` builds a value that satisfies a structured-output schema;
`default_responder` answers a request with one for the schema it asks for
(in either wire format), or "OK" when it asks for none. An array without
bounds gets one entry per numbered excerpt of the prompt ("Excerpt N:"), so
a judge prompt about 5 excerpts is answered with 5 answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Responder = Callable[[dict], "str | dict"]
"Makes a reply from the request's JSON body: the text itself, or a dict sent as its JSON."


def example_for_schema(schema: dict, root: dict | None = None, n_items: int = 1) -> Any:
    """A value that satisfies `schema` (the subset providers accept); an array has `n_items` entries, moved
    into its minItems..maxItems range."""
    root = root or schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        return example_for_schema(target, root, n_items)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return example_for_schema(options[0], root, n_items)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {k: example_for_schema(v, root, n_items) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        n = max(n_items, schema.get("minItems", 0))
        n = min(n, schema.get("maxItems", n))
        return [example_for_schema(schema.get("items", {"type": "string"}), root) for _ in range(n)]
    if kind == "string":
        return "example"[: schema.get("maxLength", 7)].ljust(schema.get("minLength", 0), "e")
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


_EXCERPT = re.compile(r"^Excerpt (\d+):", re.MULTILINE)


def prompt_text(body: dict) -> str:
    """All message text of a request body, in either wire format."""
    parts = []
    for m in body.get("messages", []):
        c = m.get("content")
        parts += [c] if isinstance(c, str) else [b.get("text", "") for b in c or [] if isinstance(b, dict)]
    return "\n".join(parts)


def default_responder(body: dict) -> str | dict:
    schema = requested_schema(body)
    if schema is None:
        return "OK"
    numbers = [int(n) for n in _EXCERPT.findall(prompt_text(body))]
    return example_for_schema(schema, n_items=max(numbers, default=1))
