"""Latent-range shards of interpret and score: separate append-only logs that merge without duplicates.

    python -m engine.interpret RUN --shard 0/4 ...    # on 4 processes or machines: 0/4 .. 3/4
    python -m engine.score RUN --shard 0/4 ...
    python -m engine.merge RUN                        # fold every shard log into the main logs

Shard k of N owns the global latents [floor(k L / N), floor((k+1) L / N)) of the run
(L = harvest/config.json n_latents), intersected with --latents. It appends to its own
files beside the main ones:

    interpretations/results.jsonl   ->  interpretations/results.shard-0001-of-0004.jsonl
    scores/detection.jsonl          ->  scores/detection.shard-0001-of-0004.jsonl
    scores/details/detection.jsonl  ->  scores/details/detection.shard-0001-of-0004.jsonl

so shards never share a file (each log has one writer, as resultsio requires) and
machines without a shared disk just copy their shard files into one RUN folder. Every
reader reads a log *family* (the main file, then its shard files in name order), so a
shard that restarts skips what any shard finished, and score, exports and the report
see sharded results before any merge.

`python -m engine.merge` (engine/score/merge.py) folds the shard logs into the main ones
without duplicates.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from engine.core.errors import UserError
from engine.core.jsonl import iter_records

T = TypeVar("T")
_SHARD = re.compile(r"\.shard-(\d{4})-of-(\d{4})$")


@dataclass(frozen=True)
class Shard:
    index: int
    "0-based shard number."
    count: int
    "Number of shards."

    @classmethod
    def parse(cls, spec: str | None) -> Shard | None:
        """'k/N' -> Shard(k, N); '' or None -> no sharding."""
        if not spec:
            return None
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)) or int(m.group(2)) > 9999:
            raise UserError(f"--shard {spec!r}: write k/N with 0 <= k < N <= 9999, e.g. --shard 0/4 .. --shard 3/4")
        return cls(int(m.group(1)), int(m.group(2)))

    def bounds(self, n_latents: int) -> tuple[int, int]:
        """[lo, hi) of the global latents this shard owns."""
        return self.index * n_latents // self.count, (self.index + 1) * n_latents // self.count

    def owns(self, latent: int, n_latents: int) -> bool:
        lo, hi = self.bounds(n_latents)
        return lo <= latent < hi

    @property
    def suffix(self) -> str:
        return f".shard-{self.index:04d}-of-{self.count:04d}"


def log_path(main: Path, shard: Shard | None) -> Path:
    """Where a process appends: the main log, or its shard's sibling of it."""
    return main if shard is None else main.with_name(main.stem + shard.suffix + main.suffix)


def family(main: Path) -> list[Path]:
    """The main log (first, if present) and its shard logs, in name order."""
    shards = sorted(p for p in main.parent.glob(f"{main.stem}.shard-*-of-*{main.suffix}") if _SHARD.search(p.stem))
    return ([main] if main.exists() else []) + shards


def main_logs(folder: Path) -> list[Path]:
    """Main log names under `folder` (*.jsonl), including those that only exist as shard files."""
    names = {_SHARD.sub("", p.stem) for p in folder.glob("*.jsonl")} if folder.is_dir() else set()
    return [folder / f"{n}.jsonl" for n in sorted(names)]


def iter_family(main: Path, type_: type[T]) -> Iterator[T]:
    for path in family(main):
        yield from iter_records(path, type_)


def shard_of(path: Path) -> Shard:
    """The Shard a shard log's name encodes (results.shard-0001-of-0004.jsonl -> Shard(1, 4))."""
    m = _SHARD.search(path.stem)
    return Shard(int(m.group(1)), int(m.group(2)))
