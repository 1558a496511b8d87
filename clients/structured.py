"""Decode a structured-output reply and check it against its JSON schema.

Providers with native structured output return bare JSON; local servers
without a grammar, or models asked without one, may wrap it in a ``` fence
or a sentence, and a grammar may let raw control characters (newlines, tabs)
into strings, which strict JSON forbids. `decode_output` tries the bare text,
then the fenced block, then the outermost {...} span, each strictly and then
as `json.loads(strict=False)` reads it, and checks the result with `schema_errors`
(the subset of JSON Schema that `provider_schema` emits, plus the usual
numeric/length bounds).

`provider_schema(T)` turns a msgspec Struct into the JSON Schema that LLM
providers accept for structured output: root inlined, every property
required, `additionalProperties: false`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

_decode = msgspec.json.Decoder().decode
UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What decoding JSON bytes can raise: bad JSON or fields (ValidationError is a DecodeError), a string
that is not UTF-8, or nesting past the decoder's depth limit (e.g. a degenerate reply "[[[[...")."""
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "null": (type(None),),
    "integer": (int,), "number": (int, float),
}


def provider_schema(struct_type: type) -> dict[str, Any]:
    """JSON Schema for structured output: root inlined, all fields required, no extras."""
    schema = msgspec.json.schema(struct_type)
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            out = {k: resolve(v) for k, v in node.items() if k not in ("title", "default")}
            if out.get("type") == "object" and "properties" in out:
                out["required"] = list(out["properties"])
                out["additionalProperties"] = False
            return out
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


ANTHROPIC_UNSUPPORTED = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
                         "maxLength", "maxItems")
"JSON Schema keywords Anthropic's structured output refuses (as is minItems above 1); see anthropic_schema."


def _walk_keywords(node: Any, fn) -> Any:
    """Rebuild a schema, letting fn(schema_object) -> schema_object act on every schema object (not on the
    names under "properties", which are field names, not keywords)."""
    if isinstance(node, list):
        return [_walk_keywords(v, fn) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: ({name: _walk_keywords(v, fn) for name, v in val.items()} if k in ("properties", "$defs")
               and isinstance(val, dict) else _walk_keywords(val, fn)) for k, val in node.items()}
    return fn(out)


def _refused(node: dict) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in node.items()
            if k in ANTHROPIC_UNSUPPORTED or (k == "minItems" and v not in (0, 1))]


def anthropic_schema(schema: dict) -> dict:
    """The schema sent to Anthropic: every bound it refuses moved into the object's `description` as text
    (as the SDK's transform_schema does), minItems kept only at 0 or 1. Replies are still checked against
    the full schema (decode_output), so the bounds hold either way."""
    def fold(node: dict) -> dict:
        refused = _refused(node)
        if not refused:
            return node
        kept = {k: v for k, v in node.items() if k not in dict(refused)}
        note = ", ".join(f"{k} {v}" for k, v in refused)
        kept["description"] = f"{kept['description']} ({note})" if kept.get("description") else f"({note})"
        return kept

    return _walk_keywords(schema, fold)


def anthropic_refusals(schema: dict | None) -> list[str]:
    """The keywords of `schema` Anthropic's structured output would refuse (the fake server's check)."""
    found: list[str] = []
    if schema is not None:
        _walk_keywords(schema, lambda node: (found.extend(k for k, _ in _refused(node)), node)[1])
    return found


def decode_output(text: str, schema: dict) -> tuple[Any, str | None]:
    """(value, None) when `text` holds JSON matching `schema`;
    else (value or None, 'invalid_json' | 'schema_mismatch')."""
    value = _find_json(text)
    if value is _MISSING:
        return None, "invalid_json"
    if schema_errors(value, schema):
        return value, "schema_mismatch"
    return value, None


_MISSING = object()


def _find_json(text: str) -> Any:
    candidates = [text]
    fenced = _FENCE.search(text)
    if fenced:
        candidates.append(fenced.group(1))
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for c in candidates:
        try:
            return _decode(c.strip())
        except UNDECODABLE:
            pass
        try:  # raw newlines inside strings: what a grammar-constrained local server lets through
            return json.loads(c.strip(), strict=False)
        except (ValueError, RecursionError):
            continue
    return _MISSING


def schema_errors(value: Any, schema: dict, path: str = "$", root: dict | None = None) -> list[str]:
    """Every violation as 'path: reason' (empty when `value` conforms)."""
    root = schema if root is None else root
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            return [f"{path}: external $ref {ref} not supported"]
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return schema_errors(value, target, path, root)
    errors: list[str] = []
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf", schema.get("oneOf"))
        if all(schema_errors(value, s, path, root) for s in options):
            errors.append(f"{path}: matches none of {len(options)} alternatives")
    for sub in schema.get("allOf", []):
        errors += schema_errors(value, sub, path, root)
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is(value, k) for k in kinds):
            return errors + [f"{path}: expected {kind}, got {type(value).__name__}"]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errors += schema_errors(v, props[k], f"{path}.{k}", root)
            elif extra is False:
                errors.append(f"{path}: unexpected field {k!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(v, extra, f"{path}.{k}", root)
    elif isinstance(value, list):
        prefix = schema.get("prefixItems", [])
        for i, v in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items")
            if isinstance(sub, dict):
                errors += schema_errors(v, sub, f"{path}[{i}]", root)
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: {len(value)} items outside the allowed count")
    elif isinstance(value, str) and len(value) < schema.get("minLength", 0):
        errors.append(f"{path}: length {len(value)} below minLength {schema['minLength']}")
    # maxLength is a bound for the provider's grammar (an unbounded string runs to the token limit), not a reason
    # to throw away a reply: providers that cannot enforce it (Anthropic, where it is only a description) may
    # overrun it by a little, and the text is still the answer.
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
    return errors


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, (object,)))
