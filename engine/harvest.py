r"""Harvest: one pass over a dataset, every statistic of every latent.

    python -m engine.harvest [MODEL] [DICTIONARY ...] --hookpoints H [H ...] \
        --dataset FILE_OR_HUB --n-tokens N --batch-size B --context-length S --out RUN

With no arguments it harvests the embedded default (a 4-layer Llama trained on
Python standard-library source and a TopK SAE on its block-2 residual stream).

Library use inside any loop (no model needed):

    h = Harvester([dictionary], StateConfig(...))
    h.update({"blocks.2.hook_resid_post": acts}, tokens)   # acts [B, S, d], tokens [B, S]

Checkpoints (`--checkpoint-every`) are written atomically into RUN/harvest/checkpoint;
`--resume` continues from the last one and gives the same result as an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from engine.dictionaries import Dictionary, load_dictionary
from engine.spd import is_spd_run, load_spd_modules
from engine.errors import UserError, run_cli
from engine.state import Firings, HarvestState, StateConfig

ASSETS = Path(__file__).parent / "assets" / "default"
DEFAULT_MODEL = str(ASSETS / "model")
DEFAULT_SAE = str(ASSETS / "sae")
DEFAULT_DATASET = str(ASSETS / "corpus.jsonl.gz")
VERSION = "0.1.0"


class Harvester:
    """Encodes activations with the dictionaries and folds them into a HarvestState."""

    def __init__(self, dictionaries: list[Dictionary], cfg: StateConfig, hookpoints: list[str] | None = None, device="cpu"):
        self.dictionaries = dictionaries
        self.hookpoints = hookpoints or [d.hookpoint or f"site{i}" for i, d in enumerate(dictionaries)]
        self.offsets = [0]
        for d in dictionaries:
            self.offsets.append(self.offsets[-1] + d.n_latents)
        if self.offsets[-1] != cfg.n_latents:
            raise ValueError(f"StateConfig.n_latents={cfg.n_latents} but the dictionaries have {self.offsets[-1]} latents")
        self.state = HarvestState(cfg, device)
        self.device = torch.device(device)
        self._next_seq = 0

    def encode(self, acts: dict[str, Tensor] | Tensor) -> Firings:
        """{hookpoint: [B, S, d]} -> firings over the global latent axis, sorted by (tok, lat)."""
        if isinstance(acts, Tensor):
            acts = {self.hookpoints[0]: acts}
        parts = []
        for name, d, off in zip(self.hookpoints, self.dictionaries, self.offsets):
            x = acts[name]
            if x.shape[-1] != d.d_in:
                raise UserError(f"hookpoint {name} has width {x.shape[-1]} but dictionary {d.path} expects d_in={d.d_in} -- pair each dictionary with the hookpoint it was trained on")
            f = d.encode(x.reshape(-1, x.shape[-1]).to(self.device))
            parts.append(Firings(f.tok, f.lat + off, f.val))
        if len(parts) == 1:
            return parts[0]
        tok = torch.cat([p.tok for p in parts])
        lat = torch.cat([p.lat for p in parts])
        order = torch.argsort(tok * self.state.cfg.n_latents + lat)
        return Firings(tok[order], lat[order], torch.cat([p.val for p in parts])[order])

    def update(self, acts, tokens: Tensor, *, seq_ids: Tensor | None = None, valid: Tensor | None = None, logits: Tensor | None = None) -> None:
        """acts {hookpoint: [B, S, d]} (or one tensor), tokens [B, S]; logits [B, S, V] enable output stats."""
        tokens = tokens.to(self.device)
        B, S = tokens.shape
        if seq_ids is None:  # consecutive rows; no host sync either way
            seq_ids = torch.arange(self._next_seq, self._next_seq + B, device=self.device)
            self._next_seq += B
        firings = self.encode(acts)
        next_top = next_mass = None
        if logits is not None and self.state.cfg.output_stats:
            probs = torch.softmax(logits.float().reshape(B * S, -1), dim=-1)  # [B*S, V]
            v = valid.reshape(-1) if valid is not None else torch.ones(B * S, dtype=torch.bool, device=self.device)
            next_mass = (v.to(probs.dtype) @ probs).double()  # [V] mass over valid positions
            top_p, top_id = probs.topk(self.state.cfg.output_top, dim=-1)
            next_top = (top_id, top_p)
        self.state.update(tokens, firings, seq_ids=seq_ids.to(self.device), valid=valid, next_top=next_top, next_mass=next_mass)


# ----------------------------------------------------------------------------- CLI


@dataclass
class HarvestArgs:
    model: str = DEFAULT_MODEL
    "HF causal LM: local folder or hub name."
    dictionaries: list[str] | None = None
    "Dictionary per hookpoint (sae-lens / sparsify folder, params.npz, neurons:<d>, SPD run folder: one for all its modules)."
    hookpoints: list[str] | None = None
    "Hookpoints (TransformerLens names or HF module paths); default: from the dictionaries' configs."
    dataset: str = DEFAULT_DATASET
    "jsonl/json/txt(.gz), parquet, arrow, datasets folder or hub name."
    dataset_column: str = "text"
    "Column holding the text."
    dataset_split: str = "train"
    "Split for hub/datasets-folder sources."
    n_tokens: int = 200_000
    "Token positions to process (rounded up to whole sequences)."
    n_batches: int = 0
    "If > 0, process exactly this many batches instead of --n-tokens."
    batch_size: int = 16
    "Sequences per forward pass."
    context_length: int = 128
    "Tokens per sequence."
    out: str = "runs/default"
    "Run directory; results go to OUT/harvest."
    top_k: int = 20
    "Max-activating examples per latent."
    n_random: int = 40
    "Uniformly sampled examples per latent."
    window: int = 16
    "Tokens kept each side of a firing."
    filter_bos: bool = True
    "Exclude BOS positions from all statistics."
    output_stats: bool = True
    "Run the full forward pass for next-token statistics (off: stop after the last hookpoint)."
    checkpoint_every: int = 0
    "Checkpoint every N batches (0: only at the end)."
    resume: bool = False
    "Continue from OUT/harvest/checkpoint."
    device: str = "auto"
    "cpu, cuda, cuda:1 or auto."
    dtype: str = "float32"
    "Model dtype: float32, bfloat16, float16."
    seed: int = 0
    "Seed of the reservoir sampling hash."
    latents: str = ""
    "Only these latents of the first dictionary: 1,5,9-20 or a JSON file with feature_indices (and scores)."
    spd_ci_threshold: float = 0.0
    "SPD runs: a component fires where its causal importance exceeds this."
    latent_parallel: bool = False
    "Under torchrun: every rank reads every batch and keeps latents [r L/N, (r+1) L/N) (state memory / N, forward x N)."
    pair_budget_mb: int = 1024
    "Above this size the token and co-occurrence tables switch from dense to bounded sketches."


def parse_args(argv) -> HarvestArgs:
    p = argparse.ArgumentParser(prog="python -m engine.harvest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = _field_docs(HarvestArgs)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=docs["model"])
    p.add_argument("dictionaries", nargs="*", help=docs["dictionaries"] + " Default: the embedded SAE.")
    for f in fields(HarvestArgs):
        if f.name in ("model", "dictionaries"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool" or isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=docs.get(f.name))
        elif f.name == "hookpoints":
            p.add_argument(flag, nargs="+", default=None, help=docs.get(f.name))
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=docs.get(f.name))
    ns = p.parse_args(argv)
    return HarvestArgs(**vars(ns))


def _field_docs(cls) -> dict[str, str]:
    """Field docstrings (the string literal under each field) for --help."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = b.value.value
    return docs


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here -- use --device cpu")
    return torch.device(name)


def load_model(path: str, device, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if not Path(path).exists() and ("/" not in path or path.startswith((".", "/"))):
        raise UserError(f"model {path} does not exist -- give a local HF model folder or a hub name")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as e:
        raise UserError(f"model {path} could not be loaded ({str(e).splitlines()[0][:150]}) -- check the folder has config.json, weights and a tokenizer") from None
    return model.to(device).eval(), tok


def main(argv: list[str] | None = None) -> Path:
    from engine.data import TokenStore, batches, iter_texts, pack
    from engine.latent_sets import parse_latents
    from engine.results import build_results, run_config

    from engine.distributed import init_from_env, merge_across_ranks

    a = parse_args(argv)
    device = pick_device(a.device)
    rank, world_size = init_from_env(device)
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    dict_paths = a.dictionaries or [DEFAULT_SAE]
    if len(dict_paths) == 1 and is_spd_run(dict_paths[0]):  # one SPD run: every (or each named) module, one read
        dicts = load_spd_modules(dict_paths[0], a.hookpoints, a.spd_ci_threshold)
    else:
        dicts = [load_dictionary(p, hookpoint=(a.hookpoints[i] if a.hookpoints and i < len(a.hookpoints) else None),
                                 ci_threshold=a.spd_ci_threshold) for i, p in enumerate(dict_paths)]
    hookpoints = a.hookpoints or [d.hookpoint for d in dicts]
    latent_ids, latent_scores = parse_latents(a.latents)
    if latent_ids:
        dicts[0].subset(latent_ids)
    if len(hookpoints) != len(dicts) or any(h is None for h in hookpoints):
        raise UserError(f"{len(dicts)} dictionaries but hookpoints {hookpoints} -- give one --hookpoints entry per dictionary")
    model, tokenizer = load_model(a.model, device, a.dtype)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and a.context_length > max_pos:
        raise UserError(f"--context-length {a.context_length} exceeds the model's max_position_embeddings={max_pos} -- lower it")

    from engine.sources import HookedModel

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
    cfg = StateConfig(
        n_latents=n_latents, vocab_size=vocab, seq_len=S, top_k=a.top_k,
        n_random=a.n_random, window=a.window, output_stats=a.output_stats, seed=a.seed,
        pair_budget_bytes=a.pair_budget_mb << 20,
        row_lo=rank * n_latents // world_size if split else 0, row_hi=(rank + 1) * n_latents // world_size if split else 0,
    )
    out = Path(a.out) / "harvest"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint" if world_size == 1 else out / "checkpoint" / f"rank{rank}"
    harvester = Harvester(dicts, cfg, hookpoints, device)
    done_seqs = 0
    if a.resume and (ckpt / "state.json").exists():
        harvester.state, meta = HarvestState.load(ckpt, device, expect=cfg)
        if meta.get("dataset") != a.dataset or meta.get("model") != a.model:
            raise UserError(f"checkpoint {ckpt} is from another model/dataset -- use the same MODEL and --dataset, or a new --out")
        done_seqs = meta["sequences_done"]
    if rank == 0:
        store = TokenStore(out / "tokens.bin", n_seq, S, mode="w+")
    if world_size > 1:  # rank 0 creates the shared store; the others open it after
        torch.distributed.barrier()
        if rank != 0:
            store = TokenStore(out / "tokens.bin", n_seq, S, mode="r+")

    texts = iter_texts(a.dataset, a.dataset_column, a.dataset_split)
    texts = itertools.chain([next(texts)], texts)  # the first record is validated before any work starts
    bos = tokenizer.bos_token_id
    bar = tqdm(total=n_seq * S, initial=done_seqs * S, unit="tok", unit_scale=True, desc="harvest", disable=rank != 0)
    t0, n_batch = time.time(), 0
    meta = lambda: {"sequences_done": done_seqs, "dataset": a.dataset, "model": a.model}
    try:
        for first, ids in batches(pack(texts, tokenizer, S), a.batch_size, n_seq, skip=done_seqs):
            if not split and (first // a.batch_size) % world_size != rank:  # data-parallel: batch i -> rank i % world
                done_seqs = first + len(ids)
                bar.update(len(ids) * S)
                continue
            ids = ids.to(device)
            acts, logits = hooked.run(ids, need_logits=a.output_stats)
            valid = ids != bos if (a.filter_bos and bos is not None) else None
            seq_ids = torch.arange(first, first + len(ids), device=device)
            harvester.update(acts, ids, seq_ids=seq_ids, valid=valid, logits=logits)
            if rank == 0 or not split:  # latent-parallel ranks all read the same batches
                store.write(first, ids)
            done_seqs = first + len(ids)
            n_batch += 1
            bar.update(len(ids) * S)
            if a.checkpoint_every and n_batch % a.checkpoint_every == 0:
                store.flush()
                harvester.state.save(ckpt, meta())
    except (UserError, KeyboardInterrupt):
        bar.close()
        if n_batch:  # keep the work done so far; --resume continues from here
            store.flush()
            harvester.state.save(ckpt, meta())
        raise
    bar.close()
    if done_seqs == 0:
        raise UserError(f"dataset {a.dataset} produced no full sequence of {S} tokens -- use more text or a shorter --context-length")
    store.flush()
    harvester.state.save(ckpt, meta())
    hooked.close()
    if split:
        return _finish_latent_parallel(a, harvester.state, model, dicts, hooked, tokenizer, store, out, done_seqs, latent_scores, t0)
    state = merge_across_ranks(harvester.state)
    if rank == 0:
        rc = run_config(a, model, dicts, hooked.sites, cfg, done_seqs, int(state.n_tokens), VERSION)
        if latent_scores:
            rc.extra["latent_scores"] = {str(k): v for k, v in latent_scores.items()}
        build_results(state, rc, dicts, tokenizer, store, model, out)
        print(f"harvest: {int(state.n_tokens):,} tokens, {cfg.n_latents} latents, {world_size} process(es) in {time.time() - t0:.1f}s -> {out}")
    return out


def _finish_latent_parallel(a, state: HarvestState, model, dicts, hooked, tokenizer, store, out: Path, done_seqs: int,
                            latent_scores, t0: float) -> Path:
    """Each rank writes the components of its latent range; rank 0 writes the stats and joins the parts."""
    import torch.distributed as dist

    from engine.distributed import world
    from engine.results import STATS, run_config, write_components, write_summary

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
    rc = run_config(a, model, dicts, hooked.sites, cfg, done_seqs, int(state.n_tokens), VERSION)
    rc.extra["latent_parallel"] = world_size
    if latent_scores:
        rc.extra["latent_scores"] = {str(k): v for k, v in latent_scores.items()}
    part = out / f"components.rank{rank}.jsonl"
    write_components(state, rc, dicts, tokenizer, store, model, part, full["count"], progress=rank == 0)
    dist.barrier()
    if rank == 0:
        write_summary(rc, {k: full[k] for k in STATS}, out)
        tmp = out / "components.jsonl.tmp"
        with open(tmp, "wb") as f:  # ranges are ordered by rank: the parts concatenate in latent order
            for r in range(world_size):
                with open(out / f"components.rank{r}.jsonl", "rb") as p:
                    shutil.copyfileobj(p, f)
        tmp.replace(out / "components.jsonl")
        for r in range(world_size):
            (out / f"components.rank{r}.jsonl").unlink()
        print(f"harvest: {int(state.n_tokens):,} tokens, {cfg.n_latents} latents over {world_size} latent-parallel "
              f"processes in {time.time() - t0:.1f}s -> {out}")
    dist.barrier()
    return out


if __name__ == "__main__":
    run_cli(main)
