"""Every LLM prompt of the engine, from Jinja2 templates, through one function: `render`.

    p = render("explain", variant="default", run=..., latent=..., examples=[...])
    p.system, p.prefix, p.prompt   # instructions | run-wide context | this item

Each template `<task>.j2` (explain, detection, fuzz, simulation, intruder)
defines three blocks. `system` holds the instructions and `prefix` what is
common to every item of a run; both go first and are sent as cacheable parts,
so only `prompt` differs between requests.

Dataset text is data, never template structure. Every `{{ value }}` goes
through `escape_data` unless a filter below or a macro built it (`Trusted`):
backslash, `<`, `>` and control characters are backslash-escaped (`\\<`,
`\\n`, `\\x07`), so a marker like `<<` or a tag can only come from the template,
whatever the corpus or an LLM-written explanation contains. Single tokens in
lists are JSON string literals (`tok`). Jinja never evaluates rendered values,
so `{{ ... }}` inside data stays inert text.

Activation levels are integers 0..10 relative to the latent's largest activation:
level = ceil(10 * a / max), 0 where a <= 0 (so any firing is at least 1).

Every schema a request carries is bounded (`bounded`): a grammar-constrained
server otherwise lets a string run to the token limit (`truncated`) or an array
be empty. Strings get `maxLength` from `MAX_CHARS` by property name (else
`DEFAULT_MAX_CHARS`) unless they have one; an array without `maxItems` is a bug
of the caller (the scorers fix it to the number of excerpts or tokens).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
from markupsafe import Markup

if TYPE_CHECKING:
    from clients.base import CompletionRequest

TEMPLATES = Path(__file__).parent
TASKS = ("explain", "detection", "fuzz", "simulation", "intruder")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_CHARS = {"reasoning": 800, "label": 160}
"maxLength of a schema's string property by name: the explainer's two to four sentences, and a short phrase."
DEFAULT_MAX_CHARS = 400
"maxLength of any other string property without one."


class Trusted(Markup):
    """Text built by the prompt code itself (markers included); rendered as is.

    Jinja's autoescape machinery is what carries trust: macro output and these
    strings are `Markup`, everything else passes `_finalize` (our escaping, not
    HTML's) before output. Templates must not use `join`, `~` or `format` on
    data, which would apply HTML escaping."""


def escape_data(text: str) -> str:
    """Make untrusted text unable to produce template structure (markers, tags, line breaks)."""
    text = text.replace("\\", "\\\\").replace("<", "\\<").replace(">", "\\>")
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _finalize(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    if isinstance(value, float):
        return Markup(f"{value:.3g}")
    return Markup(escape_data(str(value)))


def level(a: float, max_act: float) -> int:
    """Activation on the 0..10 scale of the prompts."""
    if a <= 0 or max_act <= 0:
        return 0
    return min(10, max(1, math.ceil(10.0 * a / max_act - 1e-9)))


def tok(token: str) -> Trusted:
    """One token as a JSON string literal (quotes, spaces and escapes visible; no raw < or >)."""
    return Trusted(json.dumps(token, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e"))


def marked(tokens: Sequence[str], mask: Sequence[bool]) -> Trusted:
    """The escaped text with every run of masked tokens wrapped in << >>."""
    out, inside = [], False
    for t, m in zip(tokens, mask):
        if m and not inside:
            out.append("<<")
        elif not m and inside:
            out.append(">>")
        inside = bool(m)
        out.append(escape_data(t))
    if inside:
        out.append(">>")
    return Trusted("".join(out))


def firing(window, max_act: float | None = None) -> Trusted:
    """A window with its firing tokens (activation > 0) marked."""
    return marked(window.tokens, [a > 0 for a in window.activations])


def levels(window, max_act: float) -> Trusted:
    """`"tok" 7, "tok2" 3` for the firing tokens of a window."""
    parts = [f"{tok(t)} {level(a, max_act)}" for t, a in zip(window.tokens, window.activations) if a > 0]
    return Trusted(", ".join(parts))


def numbered_tokens(tokens: Sequence[str]) -> Trusted:
    """One line per token: `index<TAB>"token"` (for the simulator)."""
    return Trusted("\n".join(f"{i}\t{tok(t)}" for i, t in enumerate(tokens, start=1)))


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    finalize=_finalize,
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
)
_ENV.filters.update(tok=tok, firing=firing, levels=levels, marked=marked, numbered_tokens=numbered_tokens)
_ENV.globals.update(level=level)


@dataclass(frozen=True)
class Prompt:
    """A rendered request: the cacheable instructions and prefix, then the item."""

    system: str
    prefix: str
    prompt: str

    @property
    def hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the three parts."""
        h = hashlib.sha256()
        for part in (self.system, self.prefix, self.prompt):
            h.update(part.encode())
            h.update(b"\x00")
        return h.hexdigest()[:16]

    @property
    def chars(self) -> int:
        return len(self.system) + len(self.prefix) + len(self.prompt)

    def request(self, custom_id: str, *, max_tokens: int, temperature: float = 0.0, schema: dict | None = None,
                schema_name: str = "output", logprobs: int = 0) -> CompletionRequest:
        """The one way a prompt becomes an LLM request: system and prefix stay the cacheable parts."""
        from clients.base import CompletionRequest

        return CompletionRequest(custom_id=custom_id, system=self.system, prefix=self.prefix, prompt=self.prompt,
                                 max_tokens=max_tokens, temperature=temperature,
                                 schema=None if schema is None else bounded(schema),
                                 schema_name=schema_name, logprobs=logprobs)

    def text(self) -> str:
        """All three parts, labelled, for --dry-run and the README."""
        return f"=== system ===\n{self.system}\n=== prefix ===\n{self.prefix}\n=== prompt ===\n{self.prompt}\n"


def bounded(schema: dict, name: str = "") -> dict:
    """A copy of `schema` with every string bounded (`MAX_CHARS`); ValueError on an array without maxItems."""
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items()}
    if out.get("type") == "string" and "maxLength" not in out and "enum" not in out:
        out["maxLength"] = MAX_CHARS.get(name, DEFAULT_MAX_CHARS)
    if out.get("type") == "array" and "maxItems" not in out:
        raise ValueError(f"schema array {name or '(root)'} has no maxItems: bound it (e.g. to the number of excerpts)")
    if "properties" in out:
        out["properties"] = {k: bounded(v, k) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = bounded(out["items"], name)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in out:
            out[key] = [bounded(v, name) for v in out[key]]
    return out


def render(task: str, **context) -> Prompt:
    """Render the three blocks of `<task>.j2` with `context` (the one assembly path of every prompt)."""
    if task not in TASKS:
        raise ValueError(f"unknown prompt task {task!r}; one of {TASKS}")
    template = _ENV.get_template(f"{task}.j2")
    parts = []
    for block in ("system", "prefix", "prompt"):
        ctx = template.new_context(dict(context))
        parts.append("".join(template.blocks[block](ctx)).strip())
    return Prompt(*parts)
