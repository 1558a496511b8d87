"""Turn a HarvestState into the run's documented outputs.

RUN/harvest/
  config.json          RunConfig
  components.jsonl     one ComponentData per latent that fired, by latent index
  stats.safetensors    per-latent count, act_sum, act_max, hist; tok_total (all latents, dead ones too)
  tokens.bin           int32 token store [n_sequences, context_length]

Statistic formulas (N token positions, n_i firings of latent i, c_it joint
count or probability mass, m_t marginal of token t, co_ij joint firings):
  token precision = c_it / m_t, recall = c_it / n_i, PMI = log(c_it N / (n_i m_t));
  latent precision(j|i) = co_ij / n_i, recall = co_ij / n_j,
  PMI = log(co_ij N / (n_i n_j)), Jaccard = co_ij / (n_i + n_j - co_ij).
Lists keep the top `top_n` entries with joint count >= `min_count`.
"""

from __future__ import annotations

import contextlib
import gc
import math
from pathlib import Path

import msgspec
import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from engine.core.examples import window_bounds, window_centre
from engine.core.rundir import RunDir, replacing, write_atomic
from engine.core.schemas import (
    ActivationExample,
    ComponentCorrelations,
    ComponentData,
    HookpointInfo,
    LogitLens,
    RunConfig,
    Scored,
    TokenStats,
)
from engine.core.token_text import TokenText
from engine.harvest.neighbours import write_directions
from engine.harvest.pair_counts import on_cpu
from engine.harvest.pair_lists import row_lists, sig
from engine.harvest.parallel_write import choose_workers, write_parts
from engine.harvest.state import HarvestState, StateConfig
from engine.harvest.token_bytes import token_bytes

TOP_N = 10
"Entries of each ranked list."
MIN_COUNT = 2
"Smallest joint count a list entry may have."
EXAMPLE_CELLS = 1 << 20
"Window cells (latents x (K + R) examples x (2W + 1) tokens) built together: 512 latents at the defaults."


def run_config(a, model, dicts, sites, cfg: StateConfig, n_seq: int, n_tokens: int, version: str,
               model_revision: str | None = None) -> RunConfig:
    hps, off = [], 0
    for site, d in zip(sites, dicts):
        ids = d.latent_ids.tolist() if d.latent_ids is not None else None
        hps.append(HookpointInfo(name=site.name, module=site.module, dictionary=d.path, kind=d.kind, d_in=d.d_in,
                                 n_latents=d.n_latents, offset=off, latent_ids=ids))
        off += d.n_latents
    return RunConfig(
        model=a.model, model_revision=model_revision, model_class=type(model).__name__,
        n_layers=int(getattr(model.config, "num_hidden_layers", 0)),
        dataset=a.dataset, dataset_column=a.dataset_column, context_length=cfg.seq_len, batch_size=a.batch_size,
        n_sequences=n_seq, n_tokens=n_tokens, hookpoints=hps, n_latents=cfg.n_latents, top_k=cfg.top_k,
        n_random=cfg.n_random, window=cfg.window, top_chunk=cfg.top_chunk, center_examples=cfg.center_examples,
        histogram_edges=cfg.hist_edges(), filter_bos=a.filter_bos,
        output_stats=cfg.output_stats, seed=cfg.seed, engine_version=version, backend="torch",
    )


def token_text(tokenizer, vocab: int) -> TokenText:
    """Every token's raw bytes: windows decode whole (no U+FFFD for split characters), lone tokens readably."""
    return TokenText(token_bytes(tokenizer, vocab))


def token_strings(tokenizer, vocab: int) -> list[str]:
    """Each token alone, readably (bytes that are no character as <0xNN>)."""
    tt = token_text(tokenizer, vocab)
    return [tt.readable(i) for i in range(vocab)]


STATS = ("count", "act_sum", "act_max", "hist", "tok_total")
"Per-latent (and per-token) tensors of stats.safetensors."


def build_results(state: HarvestState, rc: RunConfig, dicts, tokenizer, store, model, run: RunDir) -> None:
    s = {k: v.cpu() for k, v in state.tensors().items()}
    write_summary(rc, s, run)
    tt = token_text(tokenizer, state.cfg.vocab_size)  # built once: the examples' text and token_bytes.json
    write_components(state, rc, dicts, tt, store, model, run.components, s["count"], tensors=s)
    write_vocabulary_files(rc, dicts, tt, model, run)


def write_vocabulary_files(rc: RunConfig, dicts, tt: TokenText, model, run: RunDir) -> None:
    """token_bytes.json (every token's bytes) and directions.safetensors (engine/harvest/neighbours.py)."""
    tt.save(run.token_bytes)
    write_directions(dicts, model, rc, run.harvest)


def write_summary(rc: RunConfig, stats: dict[str, Tensor], run: RunDir) -> None:
    """config.json and stats.safetensors (all latents)."""
    write_atomic(run.config, msgspec.json.format(msgspec.json.encode(rc)))
    with replacing(run.stats) as tmp:
        save_file({k: stats[k].contiguous() for k in STATS}, str(tmp))


def write_components(state: HarvestState, rc: RunConfig, dicts, tt: TokenText, store, model, path: Path,
                     all_counts: Tensor, progress: bool = True, tensors: dict[str, Tensor] | None = None,
                     workers: int | None = None) -> None:
    """One ComponentData line per latent of the state's rows that fired, written to `path` via a temp file
    (tt: the run's token text, `token_text(tokenizer, vocab)`).
    all_counts [n_latents]: firing counts of every latent (co-occurrence marginals; a latent-parallel
    state only counts its own rows). tensors: the state's tensors on the CPU when the caller has them.
    workers: processes writing parts of the file (engine.harvest.parallel_write; None: chosen there)."""
    cfg = state.cfg
    lo, _ = cfg.rows
    s = tensors if tensors is not None else {k: v.cpu() for k, v in state.tensors().items()}
    N = float(s["n_tokens"])
    vocab_str = [tt.readable(i) for i in range(cfg.vocab_size)]
    original = [(h, h.latent_ids[i] if h.latent_ids else i) for h in rc.hookpoints for i in range(h.n_latents)]
    keys = [f"{h.name}/{i}" for h, i in original]
    lens = logit_lens(dicts, model, rc)
    count = all_counts.cpu()
    in_tok, cooc_rows = on_cpu(state.in_tok), on_cpu(state.cooc)  # forked writers read CPU tensors only
    out_tok = on_cpu(state.out_tok) if state.out_tok is not None and len(s["out_total"]) else None
    rate = cfg.cooc_rate if cooc_rows.mode == "sketch" else 1.0
    sizes = {"top_n": TOP_N, "min_count": MIN_COUNT}
    fired = torch.nonzero(s["count"] > 0).squeeze(1).tolist()  # this state's rows that fired

    def write_rows(rows: list[int], f, advance) -> None:
        enc = msgspec.json.Encoder()
        lats = torch.tensor(rows, dtype=torch.int64) + lo  # their global latent ids
        n_fired = count[lats].double()
        ins = row_lists(in_tok, rows, n_fired, s["tok_total"].double(), N, vocab_str.__getitem__, **sizes)
        outs = row_lists(out_tok, rows, n_fired, s["out_total"], N, vocab_str.__getitem__, **sizes) if out_tok else None
        cos = row_lists(cooc_rows, rows, n_fired, count.double(), N, keys.__getitem__, jaccard=True, rate=rate,
                        exclude=lats, **sizes)
        block = max(1, EXAMPLE_CELLS // (max(1, cfg.top_k + cfg.n_random) * (2 * cfg.window + 1)))
        for k, row in enumerate(rows):
            if k % block == 0:  # the next rows' examples, all at once (memory bounded by EXAMPLE_CELLS)
                at = torch.tensor(rows[k : k + block], dtype=torch.int64)
                tops, rands = (example_lists(s[f"{p}_loc"][at], s[f"{p}_val"][at], s[f"{p}_win"][at], store, cfg.window,
                                             tt, source, cfg.center_examples) for p, source in (("top", "top"), ("res", "random")))
            lat = lo + row  # global latent index; `row` indexes this state's tensors
            n_i = float(count[lat])
            hp = next(h for h in rc.hookpoints if h.offset <= lat < h.offset + h.n_latents)
            i_l = next(ins)
            in_stats = TokenStats(top_precision=i_l["precision"], top_recall=i_l["recall"], top_pmi=i_l["pmi"],
                                  exact=in_tok.mode == "dense", error_bound=in_tok.error_bound(row),
                                  measure="input token")
            out_stats = None
            if outs is not None:
                o = next(outs)
                out_stats = TokenStats(top_precision=o["precision"], top_recall=o["recall"], top_pmi=o["pmi"],
                                       exact=out_tok.mode == "dense", error_bound=out_tok.error_bound(row),
                                       measure=f"top-{cfg.output_top} next-token mass")
            co = next(cos)
            corr = ComponentCorrelations(**co, exact=cooc_rows.mode == "dense", error_bound=cooc_rows.error_bound(row) / rate,
                                         sample_rate=rate, count_se=_sample_se(co, rate))
            comp = ComponentData(
                component_key=keys[lat], hookpoint=hp.name, component_idx=original[lat][1], latent=lat,
                firing_count=int(n_i), firing_density=n_i / N if N else 0.0,
                mean_activation=float(s["act_sum"][row]) / n_i, max_activation=float(s["act_max"][row]),
                histogram=s["hist"][row].tolist(),
                top_examples=tops[k % block], random_examples=rands[k % block],
                input_token_stats=in_stats, output_token_stats=out_stats,
                logit_lens=lens(lat, vocab_str) if lens else None, correlations=corr,
            )
            f.write(enc.encode(comp) + b"\n")
            if advance is not None:
                advance(1)

    with replacing(path) as tmp, tqdm(total=len(fired), desc="results", unit="latent", disable=not progress) as bar, \
            gc_paused():
        write_parts(tmp, fired, write_rows, choose_workers(len(fired)) if workers is None else workers, bar.update)


@contextlib.contextmanager
def gc_paused():
    """The cyclic garbage collector off while results are built: they are millions of lists and structs without
    cycles (freed by reference counts), whose allocations would otherwise start hundreds of collections, the
    oldest generation's walking every object the process holds (model, tokenizer, torch): 1.5 s of a 3.9 s
    write, measured with the windows of 512 latents built at once."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _sample_se(lists: dict[str, list[Scored]], rate: float) -> dict[int, float]:
    """Standard error of each listed count c (an estimate c = sampled / rate): sqrt(c rate (1 - rate)) / rate."""
    if rate >= 1:
        return {}
    return {s.index: sig(math.sqrt(s.count * rate * (1 - rate)) / rate) for lst in lists.values() for s in lst}


def example_lists(locs: Tensor, vals: Tensor, wins: Tensor, store, W: int, tt: TokenText, source,
                  centred: bool = True) -> list[list[ActivationExample]]:
    """Each row's examples at `locs` [R, K] (-1: empty slot), with vals [R, K] and the stored windows
    wins [R, K, 2W+1]; each window's tokens are its bytes decoded whole, one piece per token; windows
    centred on the firing or in its fixed chunk (core.examples.window_centre). Every step but building the
    structs runs once for all R K slots (per example, numpy calls cost more than the example's own work)."""
    R, K = locs.shape
    S, c = store.shape[1], 2 * W + 1
    flat = locs.reshape(-1).numpy()
    live = np.flatnonzero(flat >= 0)  # [n] slots holding an example, row by row
    seq, pos = np.divmod(flat[live], S)
    a, b = window_bounds(pos, S, W, centred)  # [n] what each example shows
    lo = a - (window_centre(pos, S, W, centred) - W)  # the shown rows inside the stored mid - W .. mid + W
    grid = np.asarray(store.arr)[seq[:, None], np.minimum(a[:, None] + np.arange(c), S - 1)]  # [n, c]
    length = b - a
    whole = (tt.whole_ids(grid) | (np.arange(c) >= length[:, None])).all(axis=1)  # [n] shown tokens decode alone
    text = tt.readable_ids(np.where(whole[:, None], grid, 0)).tolist()  # [n, c] (rows not whole: redone below)
    acts = wins.reshape(R * K, c)[torch.from_numpy(live)].numpy().round(5)  # [n, c]
    shown = np.take_along_axis(acts, np.minimum(lo[:, None] + np.arange(c), c - 1), axis=1).tolist()
    ids_l, whole_l, val_l = grid.tolist(), whole.tolist(), vals.reshape(-1)[torch.from_numpy(live)].tolist()
    seq_l, pos_l, a_l, len_l, row_l = seq.tolist(), pos.tolist(), a.tolist(), length.tolist(), (live // K).tolist()
    out: list[list[ActivationExample]] = [[] for _ in range(R)]
    for n in range(len(live)):
        m = len_l[n]
        ids = ids_l[n] if m == c else ids_l[n][:m]
        tokens = (text[n] if m == c else text[n][:m]) if whole_l[n] else tt.pieces(ids, False)
        out[row_l[n]].append(ActivationExample(seq_l[n], pos_l[n], round(val_l[n], 6), ids, tokens,
                                               shown[n] if m == c else shown[n][:m], pos_l[n] - a_l[n], source))
    return out


def logit_lens(dicts, model, rc: RunConfig, n: int = 10):
    """Decoder rows through the final norm weight and the unembedding -> top/bottom tokens."""
    if model is None or not hasattr(model, "get_output_embeddings"):
        return None
    W_U = model.get_output_embeddings().weight.detach().float().cpu()  # [V, d]
    norm = getattr(getattr(model, "model", None), "norm", None)
    gamma = norm.weight.detach().float().cpu() if norm is not None and hasattr(norm, "weight") else torch.ones(W_U.shape[1])
    rows = {}
    for h, d in zip(rc.hookpoints, dicts):
        if d.W_dec is not None and d.W_dec.shape[1] == W_U.shape[1]:
            logits = (d.W_dec.float().cpu() * gamma) @ W_U.T  # [L_h, V]
            top_v, top_i = logits.topk(n, dim=1)
            bot_v, bot_i = logits.topk(n, dim=1, largest=False)
            rows[h.offset] = (h.n_latents, top_v.tolist(), top_i.tolist(), bot_v.tolist(), bot_i.tolist())
    if not rows:
        return None

    def lens(lat: int, vocab_str) -> LogitLens | None:
        for off, (nl, tv, ti, bv, bi) in rows.items():
            if off <= lat < off + nl:
                r = lat - off
                mk = lambda ids, vals: [Scored(vocab_str[i], i, round(v, 4), 0.0) for i, v in zip(ids, vals)]
                return LogitLens(top=mk(ti[r], tv[r]), bottom=mk(bi[r], bv[r]))
        return None

    return lens
