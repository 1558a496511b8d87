"""What every harvest backend does before and after its loop (engine.harvest.run, engine.harvest.jax.run).

    dicts, hookpoints, latent_scores = open_dictionaries(a)   # files or names, --random-dictionary, --latents
    dicts = run_dictionaries(rc)                              # the same, again, from a finished run's config.json
    run = open_run(a)                                         # --overwrite sets the old outputs aside
    close_bar(bar)                                            # the loop's progress bar, full when the data ran out
    store = trim_tokens(run, store, done)                     # a dataset that ended early
    finish_config(rc, a, dicts, latent_scores, state)         # what config.json records beyond run_config
    report_overflow(a, state)                                 # firings a per-token cap dropped
"""

from __future__ import annotations

import json
import os
import sys

from engine.core.errors import UserError
from engine.core.latents import parse_latents
from engine.core.rundir import OVERWRITE, RunDir
from engine.core.schemas import RunConfig
from engine.harvest.config import HarvestArgs
from engine.harvest.data import TokenStore, dataset_split_used
from engine.harvest.defaults import DEFAULT_SAE
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.dictionaries.hub import pinned
from engine.harvest.dictionaries.spd import is_spd_run, load_spd_modules


def open_dictionaries(a: HarvestArgs, spd: bool = True) -> tuple[list, list[str], dict[int, float]]:
    """(dictionaries, their hookpoints, --latents scores): loaded, randomised for the control, subset."""
    paths = a.dictionaries or [DEFAULT_SAE]
    if len(paths) == 1 and is_spd_run(paths[0]):  # one SPD run: every (or each named) module, one read
        if not spd:
            raise UserError(f"{paths[0]} is an SPD run: --backend {a.backend} does not compute causal importances "
                            "-- use --backend torch")
        dicts = load_spd_modules(paths[0], a.hookpoints, a.spd_ci_threshold)
    else:
        dicts = [load_dictionary(p, hookpoint=(a.hookpoints[i] if a.hookpoints and i < len(a.hookpoints) else None),
                                 ci_threshold=a.spd_ci_threshold) for i, p in enumerate(paths)]
    if a.random_dictionary:  # the control: same shapes and norms, random directions (before any --latents subset)
        dicts = randomized(dicts, a.seed)
    hookpoints = a.hookpoints or [d.hookpoint for d in dicts]
    latent_ids, latent_scores = parse_latents(a.latents or (f"0-{a.max_latents - 1}" if a.max_latents > 0 else ""))
    if latent_ids:
        dicts[0].subset(latent_ids)
    if len(hookpoints) != len(dicts) or any(h is None for h in hookpoints):
        raise UserError(f"{len(dicts)} dictionaries but hookpoints {hookpoints} -- give one --hookpoints entry per dictionary")
    for d in dicts:
        d.firings_per_token = a.firings_per_token
    return dicts, hookpoints, latent_scores


def run_dictionaries(rc: RunConfig) -> list:
    """A finished run's dictionaries as its harvest encoded with them (merge, replay): each hookpoint's read
    again (one read of an SPD run for all its modules; a hub repo at its recorded commit), SPD's CI threshold,
    the random control redrawn by the harvest's seed rule, and the --latents subset. Not replayed: a per-token
    cap's dropped firings (replay encodes densely)."""
    paths = [h.dictionary for h in rc.hookpoints]
    thr = rc.spd_ci_threshold
    if len(set(paths)) == 1 and is_spd_run(paths[0]):
        dicts = load_spd_modules(paths[0], [h.name for h in rc.hookpoints], thr)
    else:
        dicts = [load_dictionary(pinned(h.dictionary, h.revision), hookpoint=h.name, ci_threshold=thr)
                 for h in rc.hookpoints]  # a hub repo at the commit the harvest read
    if rc.random_dictionary:
        dicts = randomized(dicts, rc.seed)
    return [d.subset(h.latent_ids or []) for d, h in zip(dicts, rc.hookpoints)]


def randomized(dicts: list, seed: int) -> list:
    """The --random-dictionary control of `dicts`: dictionary i's weights drawn with seed + i."""
    return [d.randomized(seed + i) for i, d in enumerate(dicts)]


def open_run(a: HarvestArgs, rank: int = 0) -> RunDir:
    """The run directory; with --overwrite harvest, the old outputs moved aside first (rank 0 only). A folder
    holding a finished harvest and what later stages built on it is refused otherwise: a new harvest there would
    leave those explanations, scores and negatives describing other data (and counted as done)."""
    run = RunDir(a.out)
    if a.overwrite:
        if rank == 0:
            run.set_aside(a.overwrite)
    elif not a.resume and run.config.exists():
        built = [n for n in OVERWRITE["harvest"][1:] if (run.root / n).exists()]
        if built:
            raise UserError(f"{a.out} holds a harvest and what later stages built on it ({', '.join(built)}) -- a new "
                            f"harvest there would leave them describing other data: pass --overwrite harvest to set "
                            f"them aside (moved to {a.out}/replaced-<time>/), or a new --out")
    return run


def checkpoint_revision(a: HarvestArgs, shard: int | None) -> str | None:
    """--resume: the hub commit the checkpoint in --out was harvested at (None: no checkpoint, a local model, or
    one from before commits were recorded), so the resumed batches see the same weights as the first ones."""
    if not a.resume:
        return None
    try:
        return json.loads((RunDir(a.out).checkpoint(shard) / "state.json").read_text())["meta"].get("model_revision")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no readable checkpoint: HarvestState.load says what is wrong with it, if there is one


def close_bar(bar) -> None:
    """Close the harvest's progress bar after a finished loop; a dataset that ended early (trim_tokens says
    where) leaves it full at the tokens there were, not stopped short of a total it never reaches."""
    if bar.total and bar.n < bar.total:
        bar.total = bar.n
        bar.refresh()
    bar.close()


def trim_tokens(run: RunDir, store: TokenStore, done_seqs: int) -> TokenStore:
    """The dataset ended before the sequences asked for: cut tokens.bin to the rows harvested, as config.json says."""
    n, S = store.shape
    if done_seqs >= n:
        return store
    store.flush()
    del store.arr  # np.memmap: close the mapping before the file shrinks under it
    os.truncate(run.tokens, done_seqs * S * 4)
    print(f"harvest: the dataset ended after {done_seqs:,} of {n:,} sequences; tokens.bin holds those", file=sys.stderr)
    return TokenStore(run.tokens, done_seqs, S, mode="r")


def finish_config(rc: RunConfig, a: HarvestArgs, dicts, latent_scores: dict[int, float], overflow: int) -> None:
    """config.json beyond run_config: the dataset config and split read, hub revisions of named dictionaries,
    the random control, --latents scores, --sequence-offset, and firings a per-token cap dropped."""
    rc.dataset_name, rc.dataset_split = a.dataset_name or None, dataset_split_used(a.dataset, a.dataset_split)
    rc.random_dictionary = a.random_dictionary
    rc.dtype = a.dtype  # HarvestArgs spells it canonically (float32, bfloat16, float16)
    rc.spd_ci_threshold = a.spd_ci_threshold if any(d.kind.startswith("spd") for d in dicts) else 0.0  # no effect else
    for h, d in zip(rc.hookpoints, dicts):
        h.revision = d.revision
    if latent_scores:
        rc.extra["latent_scores"] = {str(k): v for k, v in latent_scores.items()}
    if a.sequence_offset:
        rc.extra["sequence_offset"] = a.sequence_offset
    if overflow:
        rc.extra["firings_over_cap"] = overflow


def report_overflow(a: HarvestArgs, overflow: int) -> None:
    if overflow:
        print(f"harvest: {overflow:,} firings past --firings-per-token {a.firings_per_token} did not fit the batch's "
              "spill and were not kept (their latents' statistics miss them) -- rerun with a higher "
              "--firings-per-token", file=sys.stderr)
