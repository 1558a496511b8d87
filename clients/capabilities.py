"""What a model accepts: a per-model capability table, plus what a client learns from the server's refusals.

A request body is built from the capabilities at the moment it is sent, so a
drop learned from one refusal applies to every request still queued, to every
retry and to Message Batches submitted later. Learned facts are persisted in
the run folder (`capabilities.json`, msgspec JSON: model id -> `ModelCaps`),
so the next process starts from them instead of failing once more. Facts only
accumulate (a field dropped, a format refused), so a save merges what this
process learned with what the file holds, under an exclusive lock: shards of
one run learning at the same time lose none of each other's facts.

Known models (sources in README.md, "LLM clients"):
  * Claude models from 4.7 on reject `temperature`, `top_p` and `top_k` with a
    400 (third-party migration guides for claude-opus-4-7; the `anthropic`
    SDK 2.15 pinned to API version 2026-10-21 no longer has the fields);
  * llama.cpp's server (`llama_cpp.server`) refuses `response_format.type:
    json_schema` with a 500 and takes `{type: json_object, schema: ...}`;
    that is learned from the refusal, as a server is not known by its model id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import msgspec

from clients.structured import UNDECODABLE

log = logging.getLogger("clients")
FILE = "capabilities.json"
"Name of the learned-capabilities file in the state folder (the run folder)."
FORMATS = ("json_schema", "json_object")
"OpenAI-compatible structured-output shapes: response_format json_schema, or json_object + top-level schema."
SAMPLING = ("temperature", "top_p", "top_k")


class ModelCaps(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one model (behind one endpoint) accepts."""

    drop: list[str] = []
    "Request fields never sent to it (it rejects them)."
    response_format: str = "json_schema"
    "OpenAI-compatible structured output shape it takes: json_schema | json_object (+ schema)."
    refused_formats: list[str] = []
    "Structured-output shapes it refused (both refused: structured output is unsupported)."


_CLAUDE = re.compile(r"claude-(?:[a-z]+-)?(\d+)[-.](\d+)(?:$|[-@:])|claude-(\d+)\.(\d+)-")


def known(model: str) -> ModelCaps:
    """The table entry for `model` (dated ids, `anthropic/` prefixes and OpenRouter's claude-4.7-opus included)."""
    bare = model.split("/", 1)[1] if "/" in model else model
    m = _CLAUDE.search(bare)
    if m:
        major, minor = (int(g) for g in (m.group(1, 2) if m.group(1) else m.group(3, 4)))
        if (major, minor) >= (4, 7) and minor < 100:  # "claude-haiku-4-5-20251001": minor is 5, the date is cut off
            return ModelCaps(drop=list(SAMPLING))
    return ModelCaps()


class CapabilityStore:
    """Per-model capabilities of one client: the table's entry, updated by what the server refuses."""

    def __init__(self, model: str, state_dir: str | Path | None = None):
        self.model = model
        self.path = Path(state_dir) / FILE if state_dir is not None else None
        self.caps = known(model)
        saved = self._read().get(model)
        if saved is not None:
            self.caps = merged(self.caps, saved)

    def drops(self, field: str) -> bool:
        return field in self.caps.drop

    def learn_drop(self, field: str) -> bool:
        """Stop sending `field`; False if it was not being sent anyway (nothing learned)."""
        if field in self.caps.drop:
            return False
        self.caps.drop = sorted([*self.caps.drop, field])
        log.info("%s rejects `%s`; sending requests without it", self.model, field)
        self._save()
        return True

    def learn_format_refused(self, fmt: str) -> bool:
        """The server refused structured-output shape `fmt`: switch to the other one. False when both are refused."""
        if fmt not in self.caps.refused_formats:
            self.caps.refused_formats = [*self.caps.refused_formats, fmt]
        other = next((f for f in FORMATS if f not in self.caps.refused_formats), None)
        if other is None:
            self._save()
            return False
        if other != self.caps.response_format:
            self.caps.response_format = other
            log.info("%s refuses response_format %s; sending %s instead", self.model, fmt, other)
        self._save()
        return True

    def _read(self) -> dict[str, ModelCaps]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=dict[str, ModelCaps])
        except UNDECODABLE as e:
            log.warning("%s: unreadable (%s); starting from the capability table", self.path, e)
            return {}

    def _save(self) -> None:
        """Merge this process's facts into the file (read, merge, replace), holding the file's lock."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.with_name(self.path.name + ".lock")):
            table = self._read()
            self.caps = table[self.model] = merged(self.caps, table[self.model]) if self.model in table else self.caps
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(msgspec.json.format(msgspec.json.encode(table)))
            os.replace(tmp, self.path)


def merged(a: ModelCaps, b: ModelCaps) -> ModelCaps:
    """Everything either record learned: the union of dropped fields and refused formats, and the first
    structured-output shape neither refused (the last one when both are refused)."""
    refused = [f for f in FORMATS if f in a.refused_formats or f in b.refused_formats]
    fmt = next((f for f in FORMATS if f not in refused), FORMATS[-1])
    return ModelCaps(drop=sorted(set(a.drop) | set(b.drop)), response_format=fmt, refused_formats=refused)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock (flock) on `path` while the block runs; no lock where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one process per run folder is assumed
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_PARAM = re.compile(r"\b(temperature|top_p|top_k)\b")
_FORMAT = re.compile(r"response_format|json_schema|output_config", re.IGNORECASE)
_REFUSAL = re.compile(r"not (?:supported|allowed|permitted|accepted)|unsupported|deprecated|must be|invalid|"
                      r"unknown|unrecognized|not one of|extra (?:inputs|fields)|no longer|cannot|may not|only|"
                      r"should be", re.IGNORECASE)


def refused_field(message: str, sent: dict) -> str | None:
    """The sampling field an error message says the server refuses, if the body sent it."""
    if not _REFUSAL.search(message):
        return None
    for m in _PARAM.finditer(message):
        if m.group(1) in sent:
            return m.group(1)
    return None


def refuses_format(message: str) -> bool:
    """Whether an error message says the structured-output format (response_format / json_schema) is refused."""
    return bool(_FORMAT.search(message) and _REFUSAL.search(message))
