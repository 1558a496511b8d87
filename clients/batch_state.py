"""The Message Batches state file: which batches a run submitted, and a create that may be in flight.

`run_batches` (clients.anthropic_batches) writes it before every step that
talks to the API, so a restart knows what was already submitted: the list of
batches (`BatchRecord`, with the batch-safe custom ids of their requests) and,
while a create request is out, its intent (`PendingCreate`), from which an
interrupted create is matched to the batch it made. `batch_custom_id` maps our
request ids to the ids the Batches API accepts.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import msgspec

from clients.errors import ClientConfigError
from clients.structured import UNDECODABLE

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class BatchRecord(msgspec.Struct, kw_only=True):
    id: str
    "Anthropic batch id (msgbatch_...)."
    custom_ids: list[str]
    "Batch-safe custom ids of its requests."
    created_at: float
    done: bool = False
    "Results handed over."


class PendingCreate(msgspec.Struct, kw_only=True):
    started_at: float
    "Unix time just before the create request was sent."
    custom_ids: list[str]


class BatchState(msgspec.Struct, kw_only=True):
    """The state file: every batch this run submitted, and an interrupted create if any."""

    batches: list[BatchRecord] = []
    pending: PendingCreate | None = None


def batch_custom_id(custom_id: str) -> str:
    """A batch-safe id (^[a-zA-Z0-9_-]{1,64}$): the id with unsafe characters replaced, cut, plus a hash."""
    digest = hashlib.sha256(custom_id.encode()).hexdigest()[:12]
    return f"{_UNSAFE.sub('_', custom_id)[:48]}-{digest}"


def load_state(path: Path) -> BatchState:
    if not path.exists():
        return BatchState()
    try:
        return msgspec.json.decode(path.read_bytes(), type=BatchState)
    except UNDECODABLE as e:
        raise ClientConfigError(f"{path}: unreadable batch state ({e}); it lists submitted batch ids, so fix it "
                                "rather than delete it, or delete it only if those batches are no longer "
                                "wanted") from None


def save_state(path: Path, state: BatchState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)))
    os.replace(tmp, path)
