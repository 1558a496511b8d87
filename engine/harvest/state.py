"""Harvest state: every statistic of every latent, in memory that does not grow with tokens.

One `HarvestState` holds, for L latents (all hookpoints on one global axis),
a vocabulary of V tokens and sequences of S tokens:

| tensor            | shape            | what                                                  |
|-------------------|------------------|-------------------------------------------------------|
| n_tokens          | []               | token positions counted (BOS/padding excluded)        |
| count             | [L]              | firings                                               |
| act_sum, act_max  | [L]              | sum (float64) and max of activation over firings      |
| hist              | [L, n_bins]      | firings per log10-spaced activation bin               |
| top_val/top_loc   | [L, K]           | K largest activations and where (loc = seq * S + pos) |
| top_win           | [L, K, 2W+1]     | the latent's activation on the window around each     |
| res_key/res_loc   | [L, R]           | bottom-R of i.i.d. uniform keys: a uniform sample     |
| res_val, res_win  | [L, R], [L,R,2W+1] | activation at, and window around, each sample       |
| tok_total         | [V]              | occurrences of each token                             |
| in_tok            | L x V pairs      | token at the firing position (dense or sketch)        |
| out_total         | [V]              | predicted next-token probability mass, all positions  |
| out_tok           | L x V pairs      | same mass at firing positions (top-T next tokens)     |
| cooc              | L x L pairs      | co-firing counts (dense matmul or sparse pairs)       |

Random keys are a hash of (loc, latent, seed), not a random-number stream, so
the reservoir is a deterministic function of the data: a state merged from any
split of the data equals the single-pass state exactly, counts and samples alike.

Per-latent selection is the per-batch subsampling: each latent contributes at
most K top and R reservoir candidates per batch, chosen within its own segment,
so a frequent latent can never crowd out a rare one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from engine.core.errors import UserError
from engine.core.examples import window_centre
from engine.core.rundir import replacing, write_atomic
from engine.harvest.firings import Firings, reservoir_keys
from engine.harvest.pair_counts import PairCounter, choose_mode
from engine.harvest.subsample import position_keys, sample_positions
from kernels.cooccurrence import cooc_dense_update, cooc_pairs_bounded, cooc_pairs_rows
from kernels.sorting import stable_argsort
from kernels.topk_merge import group_best, moved_old, topk_merge
from kernels.window_gather import gather_windows

SCATTER_COST = 64
"FLOP-equivalents of one scattered pair update, for the co-occurrence cost model."
STEPS = ("counts", "top_k", "reservoir", "input_tokens", "output_tokens", "cooc")
"The statistics of one update, in order (`update(steps=...)` runs a subset: the bench's breakdown)."
INT64_MAX = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class StateConfig:
    n_latents: int
    "L: latents over all hookpoints."
    vocab_size: int
    "V: tokenizer vocabulary size."
    seq_len: int
    "S: tokens per sequence (locations are seq * S + pos)."
    top_k: int = 20
    "K: max-activating examples kept per latent."
    n_random: int = 40
    "R: uniformly sampled firings kept per latent."
    window: int = 16
    "W: tokens kept each side of a firing."
    n_bins: int = 48
    "Activation histogram bins, log10-spaced over [hist_lo, hist_hi]; outside values clamp to the end bins."
    hist_lo: float = -3.0
    "log10 of the lowest bin edge."
    hist_hi: float = 3.0
    "log10 of the highest bin edge."
    output_stats: bool = True
    "Accumulate predicted next-token mass (needs logits: the full forward pass)."
    output_top: int = 8
    "Next-token candidates per firing position counted for output stats."
    pair_budget_bytes: int = 1 << 30
    "A pair table (latent x token, latent x latent) is dense and exact when it fits this; else a sketch."
    token_slots: int = 64
    "Sketch slots per latent for token tables."
    cooc_slots: int = 64
    "Sketch slots per latent for co-occurrence."
    seed: int = 0
    "Seed of the reservoir key hash."
    row_lo: int = 0
    "Latent-parallel harvest: first latent whose statistics this state keeps."
    row_hi: int = 0
    "One past the last kept latent (0 = n_latents). Co-occurrence columns always span all latents."
    top_chunk: int = 0
    "Top-K keeps at most one firing per latent in each chunk [j c, (j+1) c) of a sequence (c = top_chunk; 0: no limit). Exact in one pass: a sequence never spans two batches."
    cooc_rate: float = 1.0
    "Sketched co-occurrence only: the share of token positions whose co-firing pairs are counted (engine.harvest.subsample; counts are scaled by 1 / rate when written). 1: every position."
    center_examples: bool = True
    "Example windows centred on the firing (True) or delphi's fixed chunks of 2W+1 tokens holding it (False)."
    seq_offset: int = 0
    "Global index of this state's sequence 0 in the reservoir key hash: runs harvested over consecutive parts of a dataset with offsets 0, n_A, n_A + n_B, ... merge (`engine.harvest merge`) into exactly the single pass."

    @property
    def rows(self) -> tuple[int, int]:
        """[lo, hi) of the latents this state keeps rows for."""
        return self.row_lo, self.row_hi or self.n_latents

    def hist_edges(self) -> list[float]:
        step = (self.hist_hi - self.hist_lo) / self.n_bins
        return [10 ** (self.hist_lo + i * step) for i in range(self.n_bins + 1)]


# ----------------------------------------------------------------------------- state


class HarvestState:
    def __init__(self, cfg: StateConfig, device: str | torch.device = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        lo, hi = cfg.rows
        if not 0 <= lo < hi <= cfg.n_latents:
            raise ValueError(f"row range [{lo}, {hi}) is not inside [0, {cfg.n_latents})")
        # L: rows kept here (all latents unless latent-parallel); co-occurrence columns span all n_latents
        L, V, K, R, W2 = hi - lo, cfg.vocab_size, cfg.top_k, cfg.n_random, 2 * cfg.window + 1
        z = dict(device=self.device)
        self.n_tokens = torch.zeros((), dtype=torch.int64, **z)
        self.overflow = torch.zeros((), dtype=torch.int64, **z)
        self.cooc_excess = torch.zeros((), dtype=torch.int64, **z)  # sampled positions beyond the fixed slots
        self.count = torch.zeros(L, dtype=torch.int64, **z)
        self.act_sum = torch.zeros(L, dtype=torch.float64, **z)
        self.act_max = torch.zeros(L, dtype=torch.float32, **z)
        self.hist = torch.zeros(L, cfg.n_bins, dtype=torch.int64, **z)
        self.hist_edges = torch.tensor(cfg.hist_edges(), dtype=torch.float64, **z)  # [n_bins + 1], not state
        self.top_val = torch.full((L, K), -math.inf, dtype=torch.float32, **z)
        self.top_loc = torch.full((L, K), -1, dtype=torch.int64, **z)
        self.top_win = torch.zeros(L, K, W2, dtype=torch.float32, **z)
        self.res_key = torch.full((L, R), math.inf, dtype=torch.float32, **z)
        self.res_loc = torch.full((L, R), -1, dtype=torch.int64, **z)
        self.res_val = torch.zeros(L, R, dtype=torch.float32, **z)
        self.res_win = torch.zeros(L, R, W2, dtype=torch.float32, **z)
        self.tok_total = torch.zeros(V, dtype=torch.int64, **z)
        self.in_tok = PairCounter(L, V, mode=choose_mode(L, V, cfg.pair_budget_bytes), slots=cfg.token_slots, dtype=torch.float64, device=self.device)
        self.out_total = torch.zeros(V if cfg.output_stats else 0, dtype=torch.float64, **z)
        self.out_tok = PairCounter(L, V, mode=choose_mode(L, V, cfg.pair_budget_bytes), slots=cfg.token_slots, dtype=torch.float64, device=self.device) if cfg.output_stats else None
        mode = choose_mode(L, cfg.n_latents, cfg.pair_budget_bytes)
        self.cooc = PairCounter(L, cfg.n_latents, mode=mode, slots=cfg.cooc_slots,  # dense counts are integers
                                dtype=torch.int64 if mode == "dense" else torch.float64, device=self.device)

    # ------------------------------------------------------------------ update

    def update(
        self,
        tokens: Tensor,
        firings: Firings,
        *,
        seq_ids: Tensor,
        valid: Tensor | None = None,
        next_top: tuple[Tensor, Tensor] | None = None,
        next_mass: Tensor | None = None,
        steps: tuple[str, ...] = STEPS,
    ) -> None:
        """Fold one batch in: fixed shapes throughout, no host synchronisation (no .item(), nonzero,
        unique or boolean-mask indexing), so a GPU never stalls and the step traces whole.

        tokens   [B, S] int64 token ids
        firings  C fixed slots (engine.harvest.firings); padding has lat < 0
        seq_ids  [B] int64 rows of the token store (global sequence index)
        valid    [B, S] bool positions that count (default all)
        next_top ([B*S, T] int64 ids, [B*S, T] float probs) top next-token predictions
        next_mass [V] float64 sum over valid positions of the next-token distribution
        steps    the statistics to update (all by default; the bench times them one by one)
        """
        cfg = self.cfg
        B, S = tokens.shape
        if S != cfg.seq_len:
            raise ValueError(f"batch has sequence length {S}, state expects {cfg.seq_len}")
        N, NL = B * S, cfg.n_latents
        lo, hi = cfg.rows
        flat_tokens = tokens.reshape(-1)  # [N]
        flat_valid = torch.ones(N, dtype=torch.bool, device=tokens.device) if valid is None else valid.reshape(-1)
        tok = firings.tok.clamp(0, max(N - 1, 0))  # [C]
        fire = (firings.lat >= 0) & flat_valid[tok] & (firings.val > 0)  # every latent: co-occurrence columns
        ok = fire & (firings.lat >= lo) & (firings.lat < hi)  # this state's rows
        row = torch.where(ok, firings.lat - lo, -1)  # [C] row, -1 = not counted here
        val = torch.where(ok, firings.val.float(), 0.0)
        if firings.overflow is not None:
            self.overflow += firings.overflow
        if "counts" in steps:
            self._counts(flat_tokens, flat_valid, row, val, next_mass)
        loc = seq_ids[tok // S] * S + tok % S  # [C] global location
        if "top_k" in steps or "reservoir" in steps:  # one sort of the batch's firings serves both
            keys, kval = self._window_keys(tok, row, val)
            if "top_k" in steps:
                top_row = self._one_per_chunk(row, val, tok, S) if cfg.top_chunk else row
                self._merge(self.top_val, self.top_loc, self.top_win, None, top_row, val, loc, val, tok, keys, kval,
                            True, N)
            if "reservoir" in steps:
                rkey = reservoir_keys(loc + cfg.seq_offset * S, row + lo, NL, cfg.seed)  # global ids: the same
                # sample however split
                self._merge(self.res_key, self.res_loc, self.res_win, self.res_val, row, rkey, loc, val, tok, keys,
                            kval, False, N)
        if "input_tokens" in steps:
            self.in_tok.add(row, flat_tokens[tok])
        if "output_tokens" in steps and self.out_tok is not None and next_top is not None:
            ids, probs = next_top  # [N, T]
            self.out_tok.add(row[:, None].expand(-1, ids.shape[1]).reshape(-1), ids[tok].reshape(-1), probs[tok].reshape(-1).double())
        if "cooc" in steps:
            tok_loc = (seq_ids[:, None] * S + torch.arange(S, device=seq_ids.device)).reshape(-1) + cfg.seq_offset * S
            n = firings.n_paired  # pairs come from the rows, never the spill (engine.harvest.firings)
            self._cooc(tok[:n], torch.where(fire, firings.lat, -1)[:n], N, firings.per_token, firings.rows, tok_loc)

    def _counts(self, flat_tokens, flat_valid, row, val, next_mass) -> None:
        cfg = self.cfg
        self.n_tokens += flat_valid.sum()
        self.tok_total.index_add_(0, flat_tokens, flat_valid.long())
        if cfg.output_stats and next_mass is not None:
            self.out_total += next_mass.to(torch.float64)
        at, one = row.clamp(min=0), (row >= 0).long()  # padding adds 0 to row 0
        self.count.index_add_(0, at, one)
        self.act_sum.index_add_(0, at, val.double())
        self.act_max.scatter_reduce_(0, at, val, reduce="amax")  # val is 0 on padding; act_max starts at 0
        # bin i holds edges[i] <= v < edges[i+1], against the float64 edges config.json lists (a float32
        # log10 would put a value just below an edge in the bin above); values outside clamp to the end bins
        bins = (torch.searchsorted(self.hist_edges, val.double(), right=True) - 1).clamp(0, cfg.n_bins - 1)
        self.hist.view(-1).index_add_(0, at * cfg.n_bins + bins, one)

    def _one_per_chunk(self, row: Tensor, val: Tensor, tok: Tensor, S: int) -> Tensor:
        """row, with -1 for each firing that is not its latent's strongest (earliest on ties) in its chunk."""
        c = self.cfg.top_chunk
        n_chunks = -(-S // c)
        group = ((tok // S) * n_chunks + (tok % S) // c) * len(self.count) + row  # [C] (sequence, chunk, row)
        return torch.where(group_best(torch.where(row >= 0, group, INT64_MAX), val), row, -1)

    def _window_keys(self, tok: Tensor, row: Tensor, val: Tensor) -> tuple[Tensor, Tensor]:
        """Sorted keys tok * rows + row of this state's firings (padding last), and their values."""
        L = len(self.count)
        keys = torch.where(row >= 0, tok * L + row, INT64_MAX)
        order = stable_argsort(keys)
        return keys[order], val[order]

    def _merge(self, buf, buf_loc, buf_win, buf_val, row, score, loc, val, tok, keys, kval, largest, n_tok) -> None:
        """Candidates that can beat a row's current last entry join its buffer (kernels.topk_merge); entries
        that enter get their windows (kernels.window_gather), the others move with their rows."""
        K = buf.shape[1]
        at = row.clamp(min=0)
        last, last_loc = buf[at, K - 1], buf_loc[at, K - 1]
        better = (score > last) if largest else (score < last)
        can = (row >= 0) & (better | (last_loc < 0) | ((score == last) & (loc < last_loc)))
        src = topk_merge(buf, buf_loc, torch.where(can, row, -1), score, loc, largest=largest)  # [L, K]
        old = moved_old(src)
        new = src >= 0
        L, W2 = len(self.count), buf_win.shape[2]
        # Windows only for the entries that entered: at most Q = min(L K, C) of them (each is a distinct
        # candidate), compacted into Q fixed slots by a prefix sum, so the gather costs Q, not L K, queries.
        LK, Q = L * K, min(L * K, len(row))
        flat_new = new.reshape(-1)
        slot = torch.full((Q + 1,), LK, dtype=torch.int64, device=row.device)  # slot Q takes the rest
        slot.scatter_(0, torch.where(flat_new, flat_new.cumsum(0) - 1, Q).clamp(max=Q),
                      torch.arange(LK, device=row.device))
        slot = slot[:Q]
        used = slot < LK
        q_slot = slot.clamp(max=LK - 1)
        q_cand = src.reshape(-1)[q_slot].clamp(min=0)
        q_tok = tok[q_cand]
        if not self.cfg.center_examples:  # --no-center-examples: the firing's fixed chunk (core.examples)
            pos = q_tok % self.cfg.seq_len
            q_tok = q_tok - pos + window_centre(pos, self.cfg.seq_len, self.cfg.window, centred=False)
        win = gather_windows(keys, kval, L, q_tok, q_slot // K, window=self.cfg.window,
                             seq_len=self.cfg.seq_len, n_tok=n_tok)  # [Q, W2]
        moved = buf_win.gather(1, old[..., None].expand(-1, -1, W2)).reshape(LK, W2)
        out = torch.cat([moved, moved.new_zeros(1, W2)])  # row LK takes the unused slots
        out.index_copy_(0, torch.where(used, slot, LK), win)
        buf_win.copy_(out[:LK].view(L, K, W2))
        if buf_val is not None:
            buf_val.copy_(torch.where(new, val[src.clamp(min=0)], buf_val.gather(1, old)))

    def _cooc(self, tok: Tensor, lat: Tensor, n_tok: int, per_token: int | None, rows: bool, tok_loc: Tensor) -> None:
        """Co-firing counts of this state's rows [lo, hi) with every latent (lat: global ids, -1 padding).
        Dense tables take F_rows^T F (kernels.cooccurrence, 2 N L_rows L FLOPs) or, when cheaper by the
        static cost model, every same-token pair (C * per_token candidates, SCATTER_COST each); sketches
        take the pairs. Both give identical counts."""
        L = self.cfg.n_latents
        lo, hi = self.cfg.rows
        C = len(lat)
        P = min(per_token or C, C, L)
        if self.cooc.mode == "dense" and 2 * n_tok * (hi - lo) * L < SCATTER_COST * C * P:
            if (lo, hi) == (0, L):
                cooc_dense_update(self.cooc.table, tok, lat, n_tok)
                return
            F = torch.zeros(n_tok, L, dtype=torch.float32, device=tok.device)  # [N, L] binary firing matrix
            F.view(-1).index_add_(0, tok * L + lat.clamp(min=0), (lat >= 0).float())
            self.cooc.table += (F[:, lo:hi].T @ F).to(self.cooc.dtype)
            return
        sampled = self.cfg.cooc_rate < 1 and self.cooc.mode == "sketch"  # a uniform position sample (subsample.py)
        if sampled and rows:  # only the sampled positions' rows build pairs
            idx, keep, excess = sample_positions(tok_loc, self.cfg.cooc_rate, self.cfg.seed)
            self.cooc_excess += excess
            a, b = cooc_pairs_rows(torch.where(keep[:, None], lat.view(n_tok, -1)[idx], -1), include_self=True)
        elif rows:  # [C * P] pairs (the diagonal counts firings), -1 where none
            a, b = cooc_pairs_rows(lat.view(n_tok, -1), include_self=True)
        else:
            if sampled:
                lat = torch.where(position_keys(tok_loc, self.cfg.seed)[tok] < self.cfg.cooc_rate, lat, -1)
            a, b = cooc_pairs_bounded(tok, lat, P, include_self=True)
        inside = (a >= lo) & (a < hi)
        self.cooc.add(torch.where(inside, a - lo, -1), b.clamp(min=0))

    # ------------------------------------------------------------------ merge

    def merge(self, other: HarvestState) -> None:
        """Fold another state (another shard of the data) into this one."""
        if asdict(other.cfg) != asdict(self.cfg):
            raise ValueError("cannot merge harvest states with different configs")
        for mine, theirs in ((self.top_loc, other.top_loc), (self.res_loc, other.res_loc)):
            both = torch.cat([mine, theirs], dim=1).sort(dim=1).values  # [L, 2K]: a location in both = same data
            if bool(((both[:, 1:] == both[:, :-1]) & (both[:, 1:] >= 0)).any()):
                raise ValueError("cannot merge harvest states that hold the same sequence locations: give each "
                                 "Harvester its own first_sequence (or seq_ids), e.g. the first one's sequence count")
        self.n_tokens += other.n_tokens
        self.overflow += other.overflow
        self.cooc_excess += other.cooc_excess
        self.count += other.count
        self.act_sum += other.act_sum
        self.act_max = torch.maximum(self.act_max, other.act_max)
        self.hist += other.hist
        self.tok_total += other.tok_total
        self.out_total += other.out_total
        for mine, theirs in ((self.in_tok, other.in_tok), (self.out_tok, other.out_tok), (self.cooc, other.cooc)):
            if mine is not None:
                mine.merge(theirs)
        self._merge_buffers(self.top_val, self.top_loc, self.top_win, None, other.top_val, other.top_loc, other.top_win, None, True)
        self._merge_buffers(self.res_key, self.res_loc, self.res_win, self.res_val, other.res_key, other.res_loc, other.res_win, other.res_val, False)

    def _merge_buffers(self, val, loc, win, extra, o_val, o_loc, o_win, o_extra, largest) -> None:
        """The other state's entries are candidates of their rows; theirs bring their windows (and values)."""
        L, K = val.shape
        row = torch.arange(L, device=val.device)[:, None].expand(L, K)
        src = topk_merge(val, loc, torch.where(o_loc >= 0, row, -1).reshape(-1), o_val.reshape(-1), o_loc.reshape(-1),
                         largest=largest)
        old, new, cand = moved_old(src), src >= 0, src.clamp(min=0)
        moved = win.gather(1, old[..., None].expand(-1, -1, win.shape[2]))
        win.copy_(torch.where(new[..., None], o_win.reshape(L * K, -1)[cand], moved))
        if extra is not None:
            extra.copy_(torch.where(new, o_extra.reshape(-1)[cand], extra.gather(1, old)))

    # ------------------------------------------------------------------ persistence

    def tensors(self) -> dict[str, Tensor]:
        t = {
            name: getattr(self, name)
            for name in ("n_tokens", "overflow", "cooc_excess", "count", "act_sum", "act_max", "hist", "top_val", "top_loc", "top_win",
                         "res_key", "res_loc", "res_val", "res_win", "tok_total", "out_total")
        }
        t.update(self.in_tok.tensors("in_tok"))
        t.update(self.cooc.tensors("cooc"))
        if self.out_tok is not None:
            t.update(self.out_tok.tensors("out_tok"))
        return t

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.tensors().values())

    def save(self, path: str | Path, meta: dict) -> None:
        """Atomic checkpoint: tensors.safetensors + state.json, each via temp file, fsync and rename."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.tensors().items()}
        with replacing(path / "tensors.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_atomic(path / "state.json", json.dumps({"config": asdict(self.cfg), "meta": meta}, indent=1))

    @classmethod
    def load(cls, path: str | Path, device="cpu", expect: StateConfig | None = None) -> tuple[HarvestState, dict]:
        path = Path(path)
        try:
            info = json.loads((path / "state.json").read_text())
            tensors = load_file(str(path / "tensors.safetensors"), device=str(device))
        except FileNotFoundError as e:
            raise UserError(f"checkpoint {path} is incomplete ({e.filename} missing) -- delete it or rerun without --resume") from None
        except Exception as e:  # corrupt safetensors / JSON
            raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}) -- delete it or rerun without --resume") from None
        cfg = StateConfig(**info["config"])
        if expect is not None and asdict(expect) != asdict(cfg):
            diff = [f"{k} {info['config'].get(k)} here {v}" for k, v in sorted(asdict(expect).items()) if info["config"].get(k) != v]
            raise UserError(f"checkpoint {path} was made with a different config ({', '.join(diff)}) -- use the same options "
                            f"{'(--cooc-sample-rate sets the auto rate) ' if 'cooc_rate' in str(diff) else ''}or a new --out")
        state = cls(cfg, device)
        state.load_tensors(tensors)
        return state, info["meta"]

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Copy in the tensors `tensors()` names (a checkpoint's, or another backend's state)."""
        for name, t in tensors.items():
            if "." not in name:
                getattr(self, name).copy_(t)
        for counter in ("in_tok", "cooc", "out_tok"):
            pc = getattr(self, counter)
            if pc is not None:
                pc.load_tensors(counter, tensors)
