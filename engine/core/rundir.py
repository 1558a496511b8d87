"""The run directory: every path a stage reads or writes, the atomic write, and the run's readers.

    RUN/harvest/config.json          RunConfig           (engine.harvest)
    RUN/harvest/components.jsonl     ComponentData lines
    RUN/harvest/stats.safetensors    per-latent tensors
    RUN/harvest/tokens.bin           int32 [n_sequences, context_length]
    RUN/harvest/checkpoint/          accumulator state (rank{r}/ under torchrun)
    RUN/interpretations/results.jsonl   Explanation lines (engine.interpret), + shard logs
    RUN/interpretations/batches.json    Message Batches intent and ids
    RUN/interpretations/feature_labels.json, feature_examples.jsonl   the seed's exports
    RUN/negatives/                   replayed non-activating pool and its embeddings
    RUN/scores/<scorer>.jsonl        ScoreResult lines (engine.score), + shard logs
    RUN/scores/details/<scorer>.jsonl   what each score judged
    RUN/scores/summary.json          pooled metrics
    RUN/report/                      the static site (engine.report)
    RUN/replaced-<time>/             what --overwrite moved aside
    RUN/capabilities.json            what the LLM clients learned a model refuses (clients/capabilities.py),
                                     + .lock, held while a process merges its facts in

No other module spells these names: they ask a `RunDir`. Files that are rewritten
whole go through `replacing` / `write_atomic` (temp file beside the target, fsync,
rename), so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from engine.core.errors import UserError
from engine.core.jsonl import UNDECODABLE, iter_records
from engine.core.schemas import ComponentData, Explanation, RunConfig, ScoreResult
from engine.core.shards import Shard, iter_family, log_path, main_logs


@contextmanager
def replacing(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path`.
    The temp name carries the pid, so processes (shards, ranks) writing side by side never collide."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        if fsync:  # the rename itself survives a power loss
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str, fsync: bool = True) -> Path:
    """Replace `path` with `data` (str is written as UTF-8) in one rename."""
    with replacing(path, fsync) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def primary(records: list[Explanation]) -> Explanation | None:
    """The explanation shown and scored for a latent: its last error-free LLM one, else its last."""
    if not records:
        return None
    return next((e for e in reversed(records) if e.source == "llm" and e.error is None), records[-1])


OVERWRITE = {"harvest": ("harvest", "negatives", "interpretations", "scores"),
             "explanations": ("interpretations", "scores"), "scores": ("scores",)}
"--overwrite STAGE: the run folders a fresh start of each stage sets aside (its own and what was built on it)."


class RunDir:
    """Paths and readers of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ------------------------------------------------------------------ harvest

    @property
    def harvest(self) -> Path:
        return self.root / "harvest"

    @property
    def config(self) -> Path:
        return self.harvest / "config.json"

    @property
    def components(self) -> Path:
        return self.harvest / "components.jsonl"

    def components_part(self, rank: int) -> Path:
        """One latent-parallel rank's components before rank 0 joins them."""
        return self.harvest / f"components.rank{rank}.jsonl"

    @property
    def stats(self) -> Path:
        return self.harvest / "stats.safetensors"

    @property
    def tokens(self) -> Path:
        return self.harvest / "tokens.bin"

    @property
    def token_bytes(self) -> Path:
        """The raw bytes of every token id (engine.core.token_text.TokenText)."""
        return self.harvest / "token_bytes.json"

    def checkpoint(self, rank: int | None = None) -> Path:
        """The accumulator checkpoint (a folder); under torchrun one per rank."""
        return self.harvest / "checkpoint" if rank is None else self.harvest / "checkpoint" / f"rank{rank}"

    # ------------------------------------------------------------------ interpret

    @property
    def interpretations(self) -> Path:
        return self.root / "interpretations"

    def explanations(self, shard: Shard | None = None) -> Path:
        """results.jsonl, or the shard's own log beside it."""
        return log_path(self.interpretations / "results.jsonl", shard)

    def batches(self, shard: Shard | None = None) -> Path:
        return log_path(self.interpretations / "batches.json", shard)

    @property
    def feature_labels(self) -> Path:
        return self.interpretations / "feature_labels.json"

    @property
    def feature_examples(self) -> Path:
        return self.interpretations / "feature_examples.jsonl"

    @property
    def negatives(self) -> Path:
        return self.root / "negatives"

    # ------------------------------------------------------------------ score

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    def score_log(self, scorer: str, shard: Shard | None = None) -> Path:
        return log_path(self.scores / f"{scorer}.jsonl", shard)

    def score_details(self, scorer: str, shard: Shard | None = None) -> Path:
        return log_path(self.scores / "details" / f"{scorer}.jsonl", shard)

    def summary(self, shard: Shard | None = None) -> Path:
        return log_path(self.scores / "summary.json", shard)

    def scorers(self) -> list[str]:
        """Scorers with a log (main or shard files)."""
        return [p.stem for p in main_logs(self.scores)]

    # ------------------------------------------------------------------ report

    @property
    def report(self) -> Path:
        return self.root / "report"

    # ------------------------------------------------------------------ overwrite

    def set_aside(self, stages: tuple[str, ...]) -> Path | None:
        """--overwrite: move the named stages' outputs, and those of the later stages built on them, into
        RUN/replaced-<UTC time>/ (never deleted); returns that folder, or None when there was nothing."""
        unknown = set(stages) - set(OVERWRITE)
        if unknown:
            raise UserError(f"--overwrite {' '.join(sorted(unknown))}: choose from {', '.join(OVERWRITE)}")
        names = sorted({n for s in stages for n in OVERWRITE[s]}, key=[*OVERWRITE["harvest"]].index)
        present = [n for n in names if (self.root / n).exists()]
        if not present:
            return None
        dest = self.root / time.strftime("replaced-%Y%m%d-%H%M%S", time.gmtime())
        while dest.exists():
            dest = dest.with_name(dest.name + "+")
        dest.mkdir(parents=True)
        for n in present:
            os.rename(self.root / n, dest / n)
        print(f"overwrite: moved {', '.join(present)} of {self.root} to {dest} (delete it when no longer needed)",
              file=sys.stderr)
        return dest

    # ------------------------------------------------------------------ readers

    def load_config(self) -> RunConfig:
        try:
            return msgspec.json.decode(self.config.read_bytes(), type=RunConfig)
        except FileNotFoundError:
            raise UserError(f"{self.config} not found -- is {self.root} a run directory? "
                            "Run python -m engine.harvest first") from None
        except UNDECODABLE as e:
            raise UserError(f"{self.config}: not a RunConfig ({e}) -- re-run the harvest") from None

    def iter_components(self, keep: set[int] | None = None) -> Iterator[ComponentData]:
        """Stream components.jsonl; `keep`: dictionary indices to yield (None = all)."""
        if not self.components.exists():
            raise UserError(f"{self.components} not found -- the harvest did not finish; rerun python -m engine.harvest")
        for c in iter_records(self.components, ComponentData):
            if keep is None or c.component_idx in keep:
                yield c

    def read_explanations(self) -> dict[int, list[Explanation]]:
        """latent -> its explanations from results.jsonl and any shard logs beside it, in log order."""
        out: dict[int, list[Explanation]] = {}
        for e in iter_family(self.explanations(), Explanation):
            out.setdefault(e.latent, []).append(e)
        return out

    def iter_scores(self, scorer: str) -> Iterator[ScoreResult]:
        """Every ScoreResult of one scorer, main log then shard logs."""
        return iter_family(self.scores / f"{scorer}.jsonl", ScoreResult)

    def latest_scores(self) -> dict[int, dict[str, ScoreResult]]:
        """latent -> scorer -> its last error-free ScoreResult."""
        out: dict[int, dict[str, ScoreResult]] = {}
        for scorer in self.scorers():
            for r in self.iter_scores(scorer):
                if r.error is None:
                    out.setdefault(r.latent, {})[r.scorer] = r
        return out
