"""python -m engine.merge RUN: fold the shard logs of sharded interpret/score runs into the main logs.

    python -m engine.interpret RUN --shard 0/4 ...    # on 4 processes or machines: 0/4 .. 3/4
    python -m engine.score RUN --shard 0/4 ...
    python -m engine.merge RUN                        # then one main log per stage

Each shard record is appended to the main log unless the family (engine.core.shards)
already holds it: an error-free explanation of the same (latent, source, explainer,
model), an error-free score of the same (scorer, latent, label) (its details travel
with it), or a byte-identical line. Then the shard file is deleted. Appends are fsynced
before the delete, and a merge killed half-way reruns to the same result: nothing is
lost or doubled, whatever overlap the shards had (e.g. a 0/2 run beside 0/3 .. 2/3 runs).
Afterwards the seed exports and scores/summary.json are rewritten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from engine.core.cli import RUN_DIR, parse_config
from engine.core.errors import UserError
from engine.core.jsonl import JsonlAppender, iter_records
from engine.core.rundir import RunDir
from engine.core.schemas import Explanation, ScoreResult
from engine.core.shards import family, log_path, shard_of
from engine.interpret.exports import write_exports
from engine.score.scorers.base import Details
from engine.score.summary import summarize


def explanation_key(e: Explanation) -> tuple | None:
    return None if e.error is not None else (e.latent, e.source, e.explainer, e.model)


def score_key(r: ScoreResult) -> tuple | None:
    return None if r.error is not None else (r.scorer, r.latent, r.label)


def _merge(main: Path, type_: type, key: Callable, paired: tuple[Path, type] | None = None) -> dict[str, int]:
    """Fold main's shard logs into main (and, for scores, the details log `paired` alongside)."""
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
                    for d in iter_records(log_path(detail_main, shard_of(shard)), detail_type):
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
            log_path(detail_main, shard_of(shard)).unlink(missing_ok=True)
    return counts


def merge_run(run_dir: str | Path) -> dict[str, dict[str, int]]:
    """Fold every shard log of `run_dir` into its main log; rewrite exports and the score summary."""
    run = RunDir(run_dir)
    if not run.config.exists():
        raise UserError(f"{run.root} has no harvest/config.json -- give a run directory")
    out = {}
    interp = run.explanations()
    out[str(interp.relative_to(run.root))] = _merge(interp, Explanation, explanation_key)
    scorers = run.scorers()
    for name in scorers:
        main = run.score_log(name)
        out[str(main.relative_to(run.root))] = _merge(main, ScoreResult, score_key,
                                                       paired=(run.score_details(name), Details))
    if family(interp):
        write_exports(run.root)
    if scorers:
        summarize(run.root, scorers, None)
        for p in run.scores.glob("summary.shard-*-of-*.json"):
            p.unlink()
    return out


@dataclass(frozen=True)
class MergeConfig:
    """`engine.merge` has no options: it folds every shard log of the run."""


def main(argv: list[str] | None = None) -> dict:
    pos, _ = parse_config(MergeConfig, argv, prog="python -m engine.merge", doc=__doc__, positionals=[RUN_DIR])
    counts = merge_run(pos.run_dir)
    for name, c in counts.items():
        print(f"merge: {name}: {c['added']} records added, {c['duplicates']} duplicates dropped")
    return counts

