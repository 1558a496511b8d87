r"""Combine harvests over different data into one run, as if harvested in one pass.

    python -m engine.harvest merge RUN_A RUN_B [RUN_C ...] --out RUN

For runs of the same model, dictionaries and settings over different data (different
files, or different slices of one dataset on different machines). Each run must have
kept its end state (`--final-checkpoint`, or `--checkpoint-every N`). RUN_B's sequences
follow RUN_A's: their ids are offset by RUN_A's sequence count, the token stores are
concatenated in the order given, and the states merge with `HarvestState.merge`.

What equals one harvest over the concatenated data (the runs' datasets one after the other):
counts, sums, maxima, histograms, top-K examples and windows (ties go to the earlier
location, as in one pass), dense token and co-occurrence tables: always, exactly. The
uniform sample (reservoir): exactly when each run was harvested with `--sequence-offset`
equal to the sequences before it (0, n_A, n_A + n_B, ...), since its keys hash global
locations; otherwise it is still a uniform sample of all firings, drawn with each run's own
keys (the merge says so). Sketched tables (over `--pair-budget-mb`) keep the Misra-Gries
guarantee (see engine/harvest/pair_counts.py), not the single pass's exact lists.

Refused, with one line naming the field: runs whose settings differ, a run listed twice,
runs that hold the same sequences (the same data twice), a run without its end state.
The merged run keeps its own end-state checkpoint, so it can be merged again.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import torch

from engine.core.cli import cli, parse_config
from engine.core.errors import UserError
from engine.core.rundir import RunDir, replacing
from engine.core.schemas import RunConfig
from engine.harvest.data import TokenStore
from engine.harvest.state import HarvestState

SAME = ("model", "model_class", "dataset_column", "context_length", "hookpoints", "n_latents", "top_k", "n_random",
        "window", "center_examples", "top_chunk", "histogram_edges", "filter_bos", "output_stats", "seed", "backend",
        "random_dictionary", "dtype", "spd_ci_threshold", "model_revision")
"RunConfig fields that must agree for runs to merge."


@dataclass
class MergeArgs:
    """`python -m engine.harvest merge`: runs over different data -> one run."""

    runs: list[str] = cli(default_factory=list, positional="+")
    "Run directories to combine, in data order (each with harvest/ and its end-state checkpoint)."
    out: str = ""
    "Run directory for the merged harvest (must not hold a harvest yet)."
    device: str = "cpu"
    "Where to merge and write results (cpu, cuda)."


def _place(v: str) -> str:
    """A model or dictionary as recorded: local paths compare by where they resolve (./m, m/ and /abs/m agree)."""
    p = Path(v).expanduser()
    return str(p.resolve()) if p.exists() else v


def _refuse_different(a: RunDir, ra: RunConfig, b: RunDir, rb: RunConfig) -> None:
    da, db = msgspec.to_builtins(ra), msgspec.to_builtins(rb)
    for d in (da, db):
        d["model"] = _place(d["model"])
        for h in d["hookpoints"]:
            h["dictionary"] = _place(h["dictionary"])
    for name in SAME:
        if da[name] != db[name]:
            show = lambda v: str(v) if len(str(v)) < 60 else str(v)[:57] + "..."
            raise UserError(f"runs {a.root} and {b.root} differ in {name} ({show(da[name])} vs {show(db[name])}) "
                            "-- merge only runs harvested with the same model, dictionaries and settings")


def _end_state(run: RunDir, rc: RunConfig, device) -> tuple[HarvestState, dict]:
    """The run's end state; a torchrun run's ranks (checkpoint/rank{r}/) merged into one."""
    ckpt = run.checkpoint(None)
    ranks = sorted(ckpt.glob("rank*/state.json"), key=lambda p: int(p.parent.name[4:]) if p.parent.name[4:].isdigit() else 0)
    if not (ckpt / "state.json").exists() and not ranks:
        raise UserError(f"run {run.root} kept no end state ({ckpt} is missing) -- harvest it again with "
                        "--final-checkpoint (or --checkpoint-every N) to merge it")
    if "latent_parallel" in rc.extra:
        raise UserError(f"run {run.root} is a --latent-parallel harvest (each rank kept a latent range) -- merge "
                        "data-parallel runs only, or harvest it without --latent-parallel")
    if (ckpt / "state.json").exists():
        state, meta = HarvestState.load(ckpt, device)
    else:  # data-parallel ranks: each holds every latent over its batches
        state, meta = HarvestState.load(ranks[0].parent, device)
        for p in ranks[1:]:
            state.merge(HarvestState.load(p.parent, device)[0])
    if meta.get("sequences_done") != rc.n_sequences:
        raise UserError(f"run {run.root}: its checkpoint holds {meta.get('sequences_done')} sequences but config.json "
                        f"{rc.n_sequences} -- finish it with --resume before merging")
    return state, meta


def _refuse_shared_sequences(stores: list[np.ndarray], names: list[Path]) -> None:
    """The same data twice: two runs holding identical sequences (more than a stray boilerplate chunk)."""
    seen: dict[bytes, int] = {}
    for r, arr in enumerate(stores):
        shared = 0
        for row in arr:
            key = row.tobytes()
            if seen.get(key, r) != r:
                shared += 1
            seen.setdefault(key, r)
        if shared and shared * 10 >= len(arr):  # a tenth or more of a run's sequences: not different data
            other = next(seen[row.tobytes()] for row in arr if seen[row.tobytes()] != r)
            raise UserError(f"runs {names[other]} and {names[r]} share {shared} of {len(arr)} sequences "
                            "-- they are over the same data; merge runs over different data")
        if shared:
            print(f"merge: {names[r]} repeats {shared} sequence(s) of an earlier run (kept, as one pass would)",
                  file=sys.stderr)


def merge_runs(paths: list[str | Path], out: str | Path, device="cpu") -> Path:
    runs = [RunDir(p) for p in paths]
    if len(runs) < 2:
        raise UserError("merge needs at least two runs -- give RUN_A RUN_B ...")
    resolved = [r.root.resolve() for r in runs]
    for i, p in enumerate(resolved):
        if p in resolved[:i]:
            raise UserError(f"run {runs[i].root} is listed twice -- merge each run once")
    dest = RunDir(out)
    if dest.root.resolve() in resolved:
        raise UserError(f"--out {dest.root} is one of the runs -- write the merge to a new folder")
    if dest.config.exists() or dest.components.exists():
        raise UserError(f"--out {dest.root} already holds a harvest -- choose a new folder")
    configs = [r.load_config() for r in runs]
    for r, rc in zip(runs[1:], configs[1:]):
        _refuse_different(runs[0], configs[0], r, rc)
    S = configs[0].context_length
    stores = [np.fromfile(r.tokens, dtype=np.int32) for r in runs]
    for r, rc, arr in zip(runs, configs, stores):
        if arr.size != rc.n_sequences * S:
            raise UserError(f"{r.tokens} holds {arr.size // S} sequences but {r.config} says {rc.n_sequences} "
                            "-- the run is incomplete; rerun its harvest")
    stores = [a.reshape(-1, S) for a in stores]
    _refuse_shared_sequences(stores, [r.root for r in runs])

    merged, offset, exact_sample = None, 0, True
    first_offset = configs[0].extra.get("sequence_offset", 0)
    for r, rc in zip(runs, configs):
        state, _ = _end_state(r, rc, device)
        exact_sample &= state.cfg.seq_offset == first_offset + offset  # its keys hashed the global locations
        exact_sample &= rc.extra.get("reservoir_exact", True)  # an earlier merge's own verdict
        if merged is None:
            merged, base_cfg = state, state.cfg
        else:
            for loc in (state.top_loc, state.res_loc):  # this run's sequences follow the ones before it
                loc.copy_(torch.where(loc >= 0, loc + offset * S, loc))
            state.cfg = dataclasses.replace(state.cfg, seq_offset=base_cfg.seq_offset)
            if dataclasses.asdict(state.cfg) != dataclasses.asdict(base_cfg):
                diff = [k for k, v in dataclasses.asdict(base_cfg).items() if dataclasses.asdict(state.cfg)[k] != v]
                raise UserError(f"runs {runs[0].root} and {r.root} differ in {', '.join(diff)} "
                                "-- merge only runs harvested with the same settings")
            merged.merge(state)
        offset += rc.n_sequences
    if not exact_sample:
        print("merge: the runs were not harvested with --sequence-offset 0, n_A, n_A + n_B, ...; the uniform sample is "
              "a uniform sample of all firings, not the single pass's draw (everything else is exact)", file=sys.stderr)

    dest.harvest.mkdir(parents=True, exist_ok=True)
    with replacing(dest.tokens) as tmp, open(tmp, "wb") as f:
        for r in runs:
            with open(r.tokens, "rb") as src:
                shutil.copyfileobj(src, f)
    merged.save(dest.checkpoint(None), {"sequences_done": offset, "dataset": " + ".join(c.dataset for c in configs),
                                        "model": configs[0].model})
    rc = msgspec.structs.replace(
        configs[0], dataset=" + ".join(c.dataset for c in configs), n_sequences=offset, n_tokens=int(merged.n_tokens),
        extra={**configs[0].extra, "merged_from": [{"run": str(r.root), "dataset": c.dataset, "n_sequences": c.n_sequences}
                                                   for r, c in zip(runs, configs)], "reservoir_exact": exact_sample})
    over = int(merged.overflow)
    if over:
        rc.extra["firings_over_cap"] = over
    _write_results(merged, rc, dest, device)
    print(f"merge: {len(runs)} runs, {offset:,} sequences, {int(merged.n_tokens):,} tokens -> {dest.harvest}")
    return dest.harvest


def _write_results(state: HarvestState, rc: RunConfig, dest: RunDir, device) -> None:
    """components.jsonl, stats, config: the same writer as the harvest, with the run's model and dictionaries."""
    from engine.harvest.model import load_model
    from engine.harvest.prepare import run_dictionaries
    from engine.harvest.results import build_results

    model, tokenizer, _ = load_model(rc.model, torch.device(device), rc.dtype, rc.model_revision)
    dicts = run_dictionaries(rc)
    store = TokenStore(dest.tokens, rc.n_sequences, rc.context_length, mode="r")
    build_results(state, rc, dicts, tokenizer, store, model, dest)


def main(argv: list[str] | None = None) -> Path:
    _, a = parse_config(MergeArgs, argv, prog="python -m engine.harvest merge", doc=__doc__)
    if not a.out:
        raise UserError("merge needs --out RUN -- name a new folder for the merged harvest")
    return merge_runs(a.runs, a.out, a.device)
