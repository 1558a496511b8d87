r"""Harvest: one pass over a dataset, every statistic of every latent.

    python -m engine.harvest [MODEL] [DICTIONARY ...] --hookpoints H [H ...] \
        --dataset FILE_OR_HUB --n-tokens N --batch-size B --context-length S --out RUN

With no arguments it harvests the embedded default (a 4-layer Llama trained on
Python standard-library source and a TopK SAE on its block-2 residual stream).
Runs over different data combine into one with
`python -m engine.harvest merge RUN_A RUN_B --out RUN` (engine/harvest/merge_runs.py).

Inside your own loop, use `engine.harvest.harvester.Harvester` (no model needed).

Checkpoints (`--checkpoint-every`) are written atomically into RUN/harvest/checkpoint;
`--resume` continues from the last one and gives the same result as an
uninterrupted run. The end state is checkpointed only when asked (`--checkpoint-every
N > 0`, or `--final-checkpoint`); a run stopped by Ctrl-C or a data error always saves
what it has done. A finished run leaves either a checkpoint of its end state or none.

Reading, tokenizing and packing the text run in a background thread a few batches
ahead (the tokenizer releases the GIL), overlapping the forward pass and the state
update; the order of the sequences is unchanged.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from engine.core.cli import parse_config
from engine.core.errors import UserError
from engine.core.rundir import RunDir, replacing
from engine.harvest.config import HarvestArgs
from engine.harvest.data import TokenStore, batches, counted_positions, iter_texts, pack
from engine.harvest.defaults import VERSION
from engine.harvest.distributed import init_from_env, merge_across_ranks
from engine.harvest.harvester import Harvester
from engine.harvest.memory import describe
from engine.harvest.model import load_model, pick_device
from engine.harvest.prepare import (
    checkpoint_revision,
    close_bar,
    finish_config,
    open_dictionaries,
    open_run,
    report_overflow,
    trim_tokens,
)
from engine.harvest.results import build_results, run_config
from engine.harvest.sources import HookedModel
from engine.harvest.state import HarvestState


class Prefetch:
    """Iterates `it` in a background thread, up to `depth` items ahead; its exceptions are raised here, in order.

    The harvest's text -> token batches pipeline (gzip + JSON, the tokenizer, packing) runs here
    while the main thread runs the model: HF fast tokenizers release the GIL, so on a free core
    tokenization costs the loop nothing. The order of items is the iterator's (determinism and
    --resume are unchanged)."""

    _END = object()

    def __init__(self, it: Iterator, depth: int = 8):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(it,), daemon=True, name="harvest-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, it: Iterator) -> None:
        try:
            for item in it:
                if not self._put((item, None)):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, raised there
            self._put((self._END, e))
            return
        self._put((self._END, None))

    def __iter__(self):
        return self

    def __next__(self):
        item, exc = self._q.get()
        if item is self._END:
            self._q.put((item, exc))  # stay exhausted
            if exc is not None:
                raise exc
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the producer (it ends at its next item; a daemon, it never holds the process)."""
        self._stop.set()


class SafeInterrupt:
    """Ctrl-C inside the harvest loop: the first stops the run at the end of the current batch, so
    the checkpoint saved on the way out never holds part of a batch (--resume would fold that part
    in twice); a second one stops at once and saves nothing (the state may be half-updated).
    Installed only in the main thread over Python's default SIGINT handler, restored on exit."""

    def __init__(self):
        self.pending = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum, frame):
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def check(self) -> None:
        """Raise KeyboardInterrupt here, between batches, if Ctrl-C was pressed."""
        if self.pending:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _remove_checkpoint(ckpt: Path) -> None:
    """Delete a checkpoint folder that no longer matches the finished run's state."""
    shutil.rmtree(ckpt, ignore_errors=True)
    if ckpt.parent.name == "checkpoint":  # torchrun: RUN/harvest/checkpoint/rank{r}; drop the parent once empty
        try:
            ckpt.parent.rmdir()
        except OSError:
            pass


def parse_args(argv) -> HarvestArgs:
    _, a = parse_config(HarvestArgs, argv, prog="python -m engine.harvest", doc=__doc__)
    return a


def main(argv: list[str] | None = None) -> Path:
    a = parse_args(argv)
    if a.backend == "jax":  # the whole harvest in JAX (engine/harvest/jax); the torch path never imports jax
        from engine.harvest.jax.run import main as jax_main

        return jax_main(a)
    device = pick_device(a.device)
    rank, world_size = init_from_env(device)
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    dicts, hookpoints, latent_scores = open_dictionaries(a)
    texts = iter_texts(a.dataset, a.dataset_column, a.dataset_split, name=a.dataset_name or None)
    texts = itertools.chain([next(texts)], texts)  # the first record (split, config, column) is checked before any work
    # --resume: the hub model at the commit the checkpoint was harvested at, not wherever the repo has moved since
    pin = checkpoint_revision(a, None if world_size == 1 else rank)
    model, tokenizer, revision = load_model(a.model, device, a.dtype, pin)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and a.context_length > max_pos:
        raise UserError(f"--context-length {a.context_length} exceeds the model's max_position_embeddings={max_pos} -- lower it")

    hooked = HookedModel(model, hookpoints, read_input=[d.transcoder for d in dicts])
    probe, _ = hooked.run(torch.zeros(1, 2, dtype=torch.int64, device=device), need_logits=False)
    for name, d in zip(hookpoints, dicts):
        d.to(device)
        if probe[name].shape[-1] != d.d_in:
            raise UserError(f"hookpoint {name} has width {probe[name].shape[-1]} but dictionary {d.path} expects d_in={d.d_in} -- pair each dictionary with the hookpoint it was trained on")
    S = a.context_length
    n_seq = a.n_batches * a.batch_size if a.n_batches else math.ceil(a.n_tokens / S)
    vocab = max(len(tokenizer), model.config.vocab_size)
    n_latents = sum(d.n_latents for d in dicts)
    split = a.latent_parallel and world_size > 1
    if split and world_size > n_latents:
        raise UserError(f"--latent-parallel over {world_size} ranks needs at least as many latents (have {n_latents}) -- use fewer processes")
    rows = (rank * n_latents // world_size, (rank + 1) * n_latents // world_size) if split else (0, 0)
    cfg = a.state_config(dicts, vocab, rows, device.type)
    if rank == 0:
        print(f"harvest: {describe(cfg)}", file=sys.stderr)  # what --n-random / --top-k / --window cost, before any work
    run = open_run(a, rank)
    if a.overwrite and world_size > 1:
        torch.distributed.barrier()  # rank 0 has set the old outputs aside
    out = run.harvest
    out.mkdir(parents=True, exist_ok=True)
    ckpt = run.checkpoint(None if world_size == 1 else rank)
    harvester = Harvester(dicts, cfg, hookpoints, device)
    done_seqs = 0
    saved = False  # whether `ckpt` holds exactly the current state and done_seqs
    want_final = a.checkpoint_every > 0 if a.final_checkpoint is None else a.final_checkpoint
    if a.resume and (ckpt / "state.json").exists():
        harvester.state, meta = HarvestState.load(ckpt, device, expect=cfg)
        if a.checkpoint_source_differs(meta):
            raise UserError(f"checkpoint {ckpt} is from another model or dataset (model, --dataset, --dataset-name, --dataset-split, --dataset-column) -- use the same ones, or a new --out")
        done_seqs, saved = meta["sequences_done"], True
        if done_seqs > n_seq:
            raise UserError(f"checkpoint {ckpt} has {done_seqs} sequences done, more than the {n_seq} this run asks for "
                            f"-- raise --n-tokens/--n-batches, or use a new --out")
    if rank == 0:
        if done_seqs and run.tokens.exists() and run.tokens.stat().st_size != n_seq * S * 4:
            os.truncate(run.tokens, n_seq * S * 4)  # resuming with another --n-tokens: keep the rows already harvested
        store = TokenStore(run.tokens, n_seq, S, mode="w+")
    if world_size > 1:  # rank 0 creates the shared store; the others open it after
        torch.distributed.barrier()
        if rank != 0:
            store = TokenStore(run.tokens, n_seq, S, mode="r+")

    bar = tqdm(total=n_seq * S, initial=done_seqs * S, unit="tok", unit_scale=True, desc="harvest", disable=rank != 0)
    t0, n_batch = time.time(), 0
    meta = lambda: {"sequences_done": done_seqs, "model_revision": revision, **a.checkpoint_source()}
    feed = Prefetch(batches(pack(texts, tokenizer, S), a.batch_size, n_seq, skip=done_seqs))
    dirty = False  # the state holds part of a batch (only a second Ctrl-C can stop it there)
    try:
        with SafeInterrupt() as interrupt:
            for first, ids in feed:
                interrupt.check()
                if not split and (first // a.batch_size) % world_size != rank:  # data-parallel: batch i -> rank i % world
                    done_seqs, saved = first + len(ids), False
                    bar.update(len(ids) * S)
                    continue
                ids = ids.to(device)
                acts, logits = hooked.run(ids, need_logits=a.output_stats)
                valid = counted_positions(ids, tokenizer) if a.filter_bos else None  # all but the inserted start token
                seq_ids = torch.arange(first, first + len(ids), device=device)
                dirty = True
                harvester.update(acts, ids, seq_ids=seq_ids, valid=valid, logits=logits)
                if rank == 0 or not split:  # latent-parallel ranks all read the same batches
                    store.write(first, ids)
                done_seqs, saved, dirty = first + len(ids), False, False
                n_batch += 1
                bar.update(len(ids) * S)
                if a.checkpoint_every and n_batch % a.checkpoint_every == 0:
                    store.flush()
                    harvester.state.save(ckpt, meta())
                    saved = True
            interrupt.check()  # pressed during the last batch
    except (UserError, KeyboardInterrupt) as e:
        bar.close()
        if n_batch and not saved and not (dirty and isinstance(e, KeyboardInterrupt)):  # keep the work done so far;
            store.flush()                                                                # --resume continues from here
            harvester.state.save(ckpt, meta())
        raise
    finally:
        feed.close()
    close_bar(bar)
    if done_seqs == 0:
        raise UserError(f"dataset {a.dataset} produced no full sequence of {S} tokens -- use more text or a shorter --context-length")
    store.flush()
    if want_final and not saved:
        harvester.state.save(ckpt, meta())
        saved = True
    hooked.close()
    if split:
        _finish_latent_parallel(a, harvester.state, model, revision, dicts, hooked, tokenizer, store, run, done_seqs,
                                latent_scores, t0)
    else:
        state = merge_across_ranks(harvester.state)
        if rank == 0:
            store = trim_tokens(run, store, done_seqs)
            rc = run_config(a, model, dicts, hooked.sites, cfg, done_seqs, int(state.n_tokens), VERSION, revision)
            over = int(state.overflow)  # a host read at the end, as every other
            finish_config(rc, a, dicts, latent_scores, over)
            build_results(state, rc, dicts, tokenizer, store, model, run)
            print(f"harvest: {int(state.n_tokens):,} tokens, {cfg.n_latents} latents, {world_size} process(es) in {time.time() - t0:.1f}s -> {out}")
            report_overflow(a, over)
    if not saved and ckpt.exists():  # an earlier (interrupted or periodic) checkpoint is behind the results now
        _remove_checkpoint(ckpt)   # (removed only after they are written: a crash above can still --resume)
    return out


def _finish_latent_parallel(a, state: HarvestState, model, revision: str | None, dicts, hooked, tokenizer, store,
                            run: RunDir, done_seqs: int, latent_scores, t0: float) -> Path:
    """Each rank writes the components of its latent range; rank 0 writes the stats and joins the parts."""
    import torch.distributed as dist

    from engine.harvest.distributed import world
    from engine.harvest.results import STATS, token_text, write_components, write_summary, write_vocabulary_files

    rank, world_size = world()
    cfg = state.cfg
    lo, hi = cfg.rows
    full = {}  # per-latent tensors of every rank, assembled by a sum of zero-padded rows
    for name in ("count", "act_sum", "act_max", "hist"):
        t = getattr(state, name)
        whole = torch.zeros((cfg.n_latents, *t.shape[1:]), dtype=t.dtype, device=t.device)
        whole[lo:hi] = t
        dist.all_reduce(whole, op=dist.ReduceOp.SUM)  # rows are disjoint: the sum places them
        full[name] = whole.cpu()
    full["tok_total"] = state.tok_total.cpu()  # every rank saw every token
    rc = run_config(a, model, dicts, hooked.sites, cfg, done_seqs, int(state.n_tokens), VERSION, revision)
    finish_config(rc, a, dicts, latent_scores, int(state.overflow))  # every rank encodes every token
    rc.extra["latent_parallel"] = world_size
    out = run.harvest
    part = run.components_part(rank)
    tt = token_text(tokenizer, cfg.vocab_size)
    write_components(state, rc, dicts, tt, store, model, part, full["count"], progress=rank == 0,
                     workers=1)  # every rank writes its own part already
    dist.barrier()
    if rank == 0:
        write_summary(rc, {k: full[k] for k in STATS}, run)
        write_vocabulary_files(rc, dicts, tt, model, run)
        with replacing(run.components) as tmp, open(tmp, "wb") as f:  # ranks own ordered ranges: the parts
            for r in range(world_size):                                 # concatenate in latent order
                with open(run.components_part(r), "rb") as p:
                    shutil.copyfileobj(p, f)
        for r in range(world_size):
            run.components_part(r).unlink()
        print(f"harvest: {int(state.n_tokens):,} tokens, {cfg.n_latents} latents over {world_size} latent-parallel "
              f"processes in {time.time() - t0:.1f}s -> {out}")
    dist.barrier()
    if rank == 0:
        trim_tokens(run, store, done_seqs)
    return out

