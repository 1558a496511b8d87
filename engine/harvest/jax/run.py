"""`python -m engine.harvest ... --backend jax`: the harvest loop on a JAX device mesh.

Same inputs, options and files as the torch path (engine.harvest.run): RUN/harvest/config.json
(`backend: "jax"`), components.jsonl and stats.safetensors written by engine.harvest.results from
the merged state, tokens.bin, and checkpoints in the torch format (so either backend resumes
the other's). Per batch: tokens -> one jitted, sharded step (forward, encode, state update;
engine.harvest.jax.mesh) with no host synchronisation; the step is functional, so a Ctrl-C
leaves the state of the last whole batch, which is what the checkpoint on the way out saves.

Not on this path (refused with a message): --latent-parallel (a torchrun mode), SPD dictionaries,
models outside engine.harvest.jax.weights.FAMILIES, non-safetensors checkpoints.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from engine.core.errors import UserError
from engine.harvest.config import HarvestArgs
from engine.harvest.data import TokenStore, batches, counted_positions, iter_texts, pack
from engine.harvest.defaults import VERSION
from engine.harvest.jax.encode import dict_params, dict_static, offsets_of
from engine.harvest.jax.forward import forward
from engine.harvest.jax.mesh import MeshHarvest, pick_devices
from engine.harvest.jax.weights import LensView, capture_point, load_params, meta_model, model_spec, rope_tables, sites
from engine.harvest.memory import describe
from engine.harvest.prepare import close_bar, finish_config, open_dictionaries, open_run, report_overflow, trim_tokens
from engine.harvest.results import build_results, run_config
from engine.harvest.state import HarvestState


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"model {path}: no tokenizer could be loaded ({str(e).splitlines()[0][:150]}) -- check the folder") from None


def setup(a: HarvestArgs, devices: list):
    """Everything before the loop: (harvest, dicts, site list, meta model, tokenizer, StateConfig, latent scores)."""
    if a.latent_parallel:
        raise UserError("--latent-parallel is a torchrun mode -- the JAX backend shards batches over its device mesh; drop it")
    if a.batch_size % len(devices):
        raise UserError(f"--batch-size {a.batch_size} is not a multiple of the {len(devices)} JAX devices -- "
                        f"use a multiple of {len(devices)}")
    dicts, hookpoints, scores = open_dictionaries(a, spd=False)
    hf_cfg, meta = meta_model(a.model)
    spec = model_spec(hf_cfg)
    max_pos = getattr(hf_cfg, "max_position_embeddings", None)
    if max_pos and a.context_length > max_pos:
        raise UserError(f"--context-length {a.context_length} exceeds the model's max_position_embeddings={max_pos} -- lower it")
    tokenizer = _tokenizer(a.model)
    site_list = sites(meta, hookpoints, [d.transcoder for d in dicts])
    points = [capture_point(s, spec) for s in site_list]
    n_load = spec.n_layers if a.output_stats else max(i for i, _ in points) + 1
    params = load_params(a.model, spec, n_load, a.dtype, head=a.output_stats)
    rope = rope_tables(hf_cfg, spec)
    shapes, _ = jax.eval_shape(lambda p, t: forward(p, rope, t, spec, tuple(set(points)), False), params,
                               jax.ShapeDtypeStruct((1, 2), np.int64))
    for site, pt, d in zip(site_list, points, dicts):
        if shapes[pt].shape[-1] != d.d_in:
            raise UserError(f"hookpoint {site.name} has width {shapes[pt].shape[-1]} but dictionary {d.path} expects "
                            f"d_in={d.d_in} -- pair each dictionary with the hookpoint it was trained on")
    cfg = a.state_config(dicts, max(len(tokenizer), hf_cfg.vocab_size), device=devices[0].platform)
    h = MeshHarvest(devices, params, rope, spec, points, [dict_params(d) for d in dicts],
                    tuple(dict_static(d) for d in dicts), offsets_of(dicts), cfg, a.output_stats)
    return h, dicts, site_list, meta, tokenizer, cfg, scores


def main(a: HarvestArgs, devices: list | None = None) -> Path:
    devices = devices or pick_devices(a.device)
    h, dicts, site_list, hf_model, tokenizer, cfg, scores = setup(a, devices)
    S, B = a.context_length, a.batch_size
    n_seq = a.n_batches * B if a.n_batches else math.ceil(a.n_tokens / S)
    print(f"harvest: {describe(cfg)}", file=sys.stderr)  # what --n-random / --top-k / --window cost, before any work
    run = open_run(a)
    run.harvest.mkdir(parents=True, exist_ok=True)
    ckpt = run.checkpoint(None)
    done, saved = 0, False
    want_final = a.checkpoint_every > 0 if a.final_checkpoint is None else a.final_checkpoint
    if a.resume and (ckpt / "state.json").exists():
        hs, meta_ck = HarvestState.load(ckpt, "cpu", expect=cfg)
        if a.checkpoint_source_differs(meta_ck):
            raise UserError(f"checkpoint {ckpt} is from another model or dataset (model, --dataset, --dataset-name, --dataset-split, --dataset-column) -- use the same ones, or a new --out")
        done, saved = meta_ck["sequences_done"], True
        if done > n_seq:
            raise UserError(f"checkpoint {ckpt} has {done} sequences done, more than the {n_seq} this run asks for "
                            "-- raise --n-tokens/--n-batches, or use a new --out")
        h.load(hs)
    if done and run.tokens.exists() and run.tokens.stat().st_size != n_seq * S * 4:
        os.truncate(run.tokens, n_seq * S * 4)
    store = TokenStore(run.tokens, n_seq, S, mode="w+")
    texts = iter_texts(a.dataset, a.dataset_column, a.dataset_split, name=a.dataset_name or None)
    texts = itertools.chain([next(texts)], texts)
    bar = tqdm(total=n_seq * S, initial=done * S, unit="tok", unit_scale=True, desc="harvest (jax)")
    t0, n_batch = time.time(), 0
    meta = lambda: {"sequences_done": done, **a.checkpoint_source()}
    try:
        for first, ids in batches(pack(texts, tokenizer, S), B, n_seq, skip=done):
            b = len(ids)
            valid = counted_positions(ids, tokenizer) if a.filter_bos else None
            valid = np.ones((b, S), bool) if valid is None else valid.numpy()
            ids_np, seq_np = ids.numpy(), np.arange(first, first + B, dtype=np.int64)
            if b < B:  # a short last batch: padded with rows that count nowhere (one compiled shape)
                ids_np = np.concatenate([ids_np, np.zeros((B - b, S), np.int64)])
                valid = np.concatenate([valid, np.zeros((B - b, S), bool)])
            new = h.step(ids_np, seq_np, valid)
            h.state, done, saved = new, first + b, False  # the state and its count change together
            store.write(first, ids)
            n_batch += 1
            bar.update(b * S)
            if a.checkpoint_every and n_batch % a.checkpoint_every == 0:
                store.flush()
                h.merged().save(ckpt, meta())
                saved = True
    except (UserError, KeyboardInterrupt):
        bar.close()
        if n_batch and not saved:  # the functional step never leaves part of a batch in h.state
            store.flush()
            h.merged().save(ckpt, meta())
        raise
    close_bar(bar)
    if done == 0:
        raise UserError(f"dataset {a.dataset} produced no full sequence of {S} tokens -- use more text or a shorter --context-length")
    store.flush()
    state = h.merged()
    if want_final and not saved:
        state.save(ckpt, meta())
        saved = True
    store = trim_tokens(run, store, done)
    # run_config reads the model class name and config: the meta-device module tree has both
    rc = run_config(a, hf_model, dicts, site_list, cfg, done, int(state.n_tokens), VERSION)
    rc.backend = "jax"
    over = int(state.overflow)
    finish_config(rc, a, dicts, scores, over)
    rc.extra["jax_devices"] = h.n
    build_results(state, rc, dicts, tokenizer, store, LensView(a.model), run)
    print(f"harvest: {int(state.n_tokens):,} tokens, {cfg.n_latents} latents, {h.n} JAX device(s) in "
          f"{time.time() - t0:.1f}s -> {run.harvest}")
    report_overflow(a, over)
    if not saved and ckpt.exists():
        shutil.rmtree(ckpt, ignore_errors=True)
    return run.harvest

