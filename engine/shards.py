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

`engine.merge` appends each shard record to the main log unless the family already
holds it: an error-free explanation of the same (latent, source, explainer, model), an
error-free score of the same (scorer, latent, label) (its details travel with it), or a
byte-identical line. Then it deletes the shard file. Appends are fsynced before the
delete, and a merge killed half-way reruns to the same result: nothing is lost or doubled,
whatever overlap the shards had (e.g. a 0/2 run beside 0/3 .. 2/3 runs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from engine.errors import UserError
from engine.resultsio import JsonlAppender, iter_records

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


# --------------------------------------------------------------------------- merge


def explanation_key(e) -> tuple | None:
    return None if e.error is not None else (e.latent, e.source, e.explainer, e.model)


def score_key(r) -> tuple | None:
    return None if getattr(r, "error", None) is not None else (r.scorer, r.latent, r.label)


def _merge(main: Path, type_: type, key: Callable, paired: tuple[Path, type] | None = None) -> dict[str, int]:
    """Fold main's shard logs into main (and, for scores, the details log `paired` alongside)."""
    import msgspec

    enc = msgspec.json.Encoder()
    shards = [p for p in family(main) if p != main]
    detail_main, detail_type = paired if paired else (None, None)
    counts = {"added": 0, "duplicates": 0}
    if not shards:
        return counts
    done, seen = set(), set()
    for r in iter_records(main, type_):  # what the main log already holds, in one pass
        seen.add(enc.encode(r))
        if (k := key(r)) is not None:
            done.add(k)
    if detail_main is not None:
        done_details = {(d.scorer, d.latent, d.label) for d in iter_records(detail_main, detail_type)}
    with JsonlAppender(main, type_, fsync=True) as log:
        dlog = JsonlAppender(detail_main, detail_type, fsync=True) if detail_main is not None else None
        if dlog:
            dlog.open()
        try:
            for shard in shards:
                details = {}
                if dlog:
                    for d in iter_records(log_path(detail_main, _shard_of(shard)), detail_type):
                        details[(d.scorer, d.latent, d.label)] = d  # the last one belongs to the last result
                for r in iter_records(shard, type_):
                    k, line = key(r), enc.encode(r)
                    if (k is not None and k in done) or line in seen:
                        counts["duplicates"] += 1
                        continue
                    if dlog:  # details first, as the scorer writes them: a result line always has its details
                        dk = (r.scorer, r.latent, r.label)
                        if dk in details and (k is not None or dk not in done_details):
                            dlog.append(details[dk])
                            done_details.add(dk)
                    log.append(r)
                    seen.add(line)
                    if k is not None:
                        done.add(k)
                    counts["added"] += 1
        finally:
            if dlog:
                dlog.close()
    for shard in shards:  # every record is in main (fsynced) before any shard file goes
        shard.unlink()
        if detail_main is not None:
            log_path(detail_main, _shard_of(shard)).unlink(missing_ok=True)
    return counts


def _shard_of(path: Path) -> Shard:
    m = _SHARD.search(path.stem)
    return Shard(int(m.group(1)), int(m.group(2)))


def merge_run(run_dir: str | Path) -> dict[str, dict[str, int]]:
    """Fold every shard log of `run_dir` into its main log; rewrite exports and the score summary."""
    from engine.schemas import Explanation, ScoreResult
    from engine.scorers import Details

    run_dir = Path(run_dir)
    if not (run_dir / "harvest" / "config.json").exists():
        raise UserError(f"{run_dir} has no harvest/config.json -- give a run directory")
    out = {}
    interp = run_dir / "interpretations" / "results.jsonl"
    out[str(interp.relative_to(run_dir))] = _merge(interp, Explanation, explanation_key)
    scorers = [p.stem for p in main_logs(run_dir / "scores")]
    for name in scorers:
        main = run_dir / "scores" / f"{name}.jsonl"
        out[str(main.relative_to(run_dir))] = _merge(main, ScoreResult, score_key,
                                                      paired=(run_dir / "scores" / "details" / f"{name}.jsonl", Details))
    if family(interp):
        from engine.exports import write_exports

        write_exports(run_dir)
    if scorers:
        from engine.score import summarize

        summarize(run_dir, scorers, None)
        for p in (run_dir / "scores").glob("summary.shard-*-of-*.json"):
            p.unlink()
    return out


def main(argv: list[str] | None = None) -> dict:
    import argparse

    p = argparse.ArgumentParser(prog="python -m engine.merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    a = p.parse_args(argv)
    counts = merge_run(a.run_dir)
    for name, c in counts.items():
        print(f"merge: {name}: {c['added']} records added, {c['duplicates']} duplicates dropped")
    return counts
