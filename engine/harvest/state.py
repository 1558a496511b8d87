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
from engine.core.rundir import replacing, write_atomic
from engine.harvest.firings import Firings, reservoir_keys
from engine.harvest.pair_counts import PairCounter, choose_mode

SCATTER_COST = 64
"FLOP-equivalents of one scattered pair update, for the co-occurrence cost model."


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

    @property
    def rows(self) -> tuple[int, int]:
        """[lo, hi) of the latents this state keeps rows for."""
        return self.row_lo, self.row_hi or self.n_latents

    def hist_edges(self) -> list[float]:
        step = (self.hist_hi - self.hist_lo) / self.n_bins
        return [10 ** (self.hist_lo + i * step) for i in range(self.n_bins + 1)]


def merge_rows(buf_val: Tensor, buf_loc: Tensor, lat: Tensor, val: Tensor, loc: Tensor, largest: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Merge candidates into per-row best-K buffers (in place).

    Rows stay sorted best first; ties order by loc ascending; empty slots hold
    -inf/+inf and loc -1. Returns, for the U touched rows:
      rows [U]    the row indices,
      prov [U, K] prov < K: the entry came from that old slot; prov >= K: from a candidate,
      cand [U, K] the candidate's index into lat/val/loc, or -1.
    """
    L, K = buf_val.shape
    rows, inv = torch.unique(lat, return_inverse=True)  # [U], [M]
    U = len(rows)
    # Rank candidates inside their row (best first, ties by loc) and keep the top K.
    order = torch.argsort(loc, stable=True)
    order = order[torch.argsort(val[order], descending=largest, stable=True)]
    order = order[torch.argsort(inv[order], stable=True)]
    starts = torch.searchsorted(inv[order], inv[order], side="left")
    rank = torch.arange(len(order), device=lat.device) - starts
    keep = rank < K
    sel, srank = order[keep], rank[keep]
    empty = -math.inf if largest else math.inf
    cand_val = torch.full((U, K), empty, dtype=buf_val.dtype, device=buf_val.device)
    cand_loc = torch.full((U, K), -1, dtype=torch.int64, device=buf_val.device)
    cand_idx = torch.full((U, K), -1, dtype=torch.int64, device=buf_val.device)
    cand_val[inv[sel], srank] = val[sel]
    cand_loc[inv[sel], srank] = loc[sel]
    cand_idx[inv[sel], srank] = sel
    both_val = torch.cat([buf_val[rows], cand_val], dim=1)  # [U, 2K]
    both_loc = torch.cat([buf_loc[rows], cand_loc], dim=1)
    # Empty slots (loc -1) must sort last whatever their value.
    loc_key = torch.where(both_loc < 0, torch.iinfo(torch.int64).max, both_loc)
    o = torch.argsort(loc_key, dim=1, stable=True)
    o = o.gather(1, torch.argsort(both_val.gather(1, o), dim=1, descending=largest, stable=True))[:, :K]  # [U, K]
    buf_val[rows] = both_val.gather(1, o)
    buf_loc[rows] = both_loc.gather(1, o)
    cand = torch.cat([torch.full_like(cand_idx, -1), cand_idx], dim=1).gather(1, o)  # [U, K] candidate index or -1
    return rows, o, cand


def gather_windows(keys: Tensor, vals: Tensor, n_latents: int, q_tok: Tensor, q_lat: Tensor, window: int, seq_len: int) -> Tensor:
    """Activation of latent q_lat around token q_tok from sorted firing keys tok * L + lat."""
    offs = torch.arange(-window, window + 1, device=q_tok.device)  # [2W+1]
    t = q_tok[:, None] + offs  # [Q, 2W+1]
    same_seq = (t >= 0) & (t // seq_len == (q_tok // seq_len)[:, None])
    want = t.clamp(min=0) * n_latents + q_lat[:, None]
    pos = torch.searchsorted(keys, want.reshape(-1)).reshape(want.shape).clamp(max=max(len(keys) - 1, 0))
    if len(keys) == 0:
        return torch.zeros(t.shape, dtype=torch.float32, device=q_tok.device)
    hit = (keys[pos] == want) & same_seq
    return torch.where(hit, vals[pos], 0.0).float()


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
        self.count = torch.zeros(L, dtype=torch.int64, **z)
        self.act_sum = torch.zeros(L, dtype=torch.float64, **z)
        self.act_max = torch.zeros(L, dtype=torch.float32, **z)
        self.hist = torch.zeros(L, cfg.n_bins, dtype=torch.int64, **z)
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
        self.cooc = PairCounter(L, cfg.n_latents, mode=choose_mode(L, cfg.n_latents, cfg.pair_budget_bytes), slots=cfg.cooc_slots, dtype=torch.float64, device=self.device)

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
    ) -> None:
        """Fold one batch in.

        tokens   [B, S] int64 token ids
        firings  sorted by (tok, lat), tok = b * S + s; padding entries have lat < 0
        seq_ids  [B] int64 rows of the token store (global sequence index)
        valid    [B, S] bool positions that count (default all)
        next_top ([B*S, T] int64 ids, [B*S, T] float probs) top next-token predictions
        next_mass [V] float64 sum over valid positions of the next-token distribution
        """
        cfg = self.cfg
        B, S = tokens.shape
        if S != cfg.seq_len:
            raise ValueError(f"batch has sequence length {S}, state expects {cfg.seq_len}")
        flat_tokens = tokens.reshape(-1)  # [B*S]
        if valid is None:
            valid = torch.ones_like(tokens, dtype=torch.bool)
        flat_valid = valid.reshape(-1)
        keep = (firings.lat >= 0) & flat_valid[firings.tok.clamp(min=0)] & (firings.val > 0)
        all_tok, all_lat = firings.tok[keep], firings.lat[keep]  # every latent: co-occurrence columns
        lo, hi = cfg.rows
        if (lo, hi) != (0, cfg.n_latents):  # latent-parallel: keep this state's rows, renumbered from 0
            keep = keep & (firings.lat >= lo) & (firings.lat < hi)
        tok, lat, val = firings.tok[keep], firings.lat[keep] - lo, firings.val[keep].float()  # [M]
        L = hi - lo

        self.n_tokens += flat_valid.sum()
        self.tok_total.index_add_(0, flat_tokens[flat_valid], torch.ones_like(flat_tokens[flat_valid]))
        if cfg.output_stats and next_mass is not None:
            self.out_total += next_mass.to(torch.float64)
        if len(lat) == 0:
            return

        self.count.index_add_(0, lat, torch.ones_like(lat))
        self.act_sum.index_add_(0, lat, val.double())
        self.act_max.scatter_reduce_(0, lat, val, reduce="amax")
        scale = cfg.n_bins / (cfg.hist_hi - cfg.hist_lo)
        bins = ((torch.log10(val) - cfg.hist_lo) * scale).floor().long().clamp(0, cfg.n_bins - 1)
        self.hist.view(-1).index_add_(0, lat * cfg.n_bins + bins, torch.ones_like(lat))

        loc = seq_ids[tok // S] * S + tok % S  # [M] int64 global location
        keys = tok * L + lat  # sorted because firings are sorted by (tok, lat)
        self._merge(self.top_val, self.top_loc, self.top_win, None, lat, val, loc, val, tok, keys, largest=True)
        rkey = reservoir_keys(loc, lat + lo, cfg.n_latents, cfg.seed)  # global ids: the same sample however split
        self._merge(self.res_key, self.res_loc, self.res_win, self.res_val, lat, rkey, loc, val, tok, keys, largest=False)

        self.in_tok.add(lat, flat_tokens[tok])
        if self.out_tok is not None and next_top is not None:
            ids, probs = next_top  # [B*S, T]
            T = ids.shape[1]
            self.out_tok.add(lat.repeat_interleave(T), ids[tok].reshape(-1), probs[tok].reshape(-1).double())
        self._cooc(all_tok, all_lat, B * S)

    def _merge(self, buf, buf_loc, buf_win, buf_val, lat, score, loc, val, tok, keys, largest):
        rows, prov, cand = merge_rows(buf, buf_loc, lat, score, loc, largest)
        K = buf.shape[1]
        old = prov.clamp(max=K - 1)
        from_old = prov < K
        # Old entries keep their windows/values (permuted); new ones gather theirs from this batch.
        win_old = buf_win[rows].gather(1, old[..., None].expand(-1, -1, buf_win.shape[2]))  # [U, K, 2W+1]
        new_u, new_j = torch.nonzero(~from_old & (cand >= 0), as_tuple=True)
        ci = cand[new_u, new_j]
        win_new = gather_windows(keys, val, len(self.count), tok[ci], lat[ci], self.cfg.window, self.cfg.seq_len)
        win_old[new_u, new_j] = win_new
        buf_win[rows] = win_old
        if buf_val is not None:
            v = buf_val[rows].gather(1, old)
            v[new_u, new_j] = val[ci]
            buf_val[rows] = torch.where(from_old | (cand >= 0), v, 0.0)

    def _cooc(self, tok: Tensor, lat: Tensor, n_tok: int) -> None:
        """Co-firing counts of this state's rows [lo, hi) with every latent, from all firings
        (global ids). Cost model per batch: a dense matmul F_rows^T F costs 2 N L_rows L FLOPs;
        scattering every same-token pair costs ~SCATTER_COST per pair (sum_t k_t^2 pairs).
        The cheaper one runs; both give identical counts."""
        L = self.cfg.n_latents
        lo, hi = self.cfg.rows
        per_tok = torch.bincount(tok, minlength=n_tok)  # [N] firings per token
        n_pairs = int((per_tok * per_tok).sum())
        if self.cooc.mode == "dense" and 2 * n_tok * (hi - lo) * L < SCATTER_COST * n_pairs:
            F = torch.zeros(n_tok, L, dtype=torch.float32, device=tok.device)  # [N, L] binary firing matrix
            F[tok, lat] = 1.0
            self.cooc.table += (F[:, lo:hi].T @ F).to(self.cooc.dtype)
            return
        starts = torch.searchsorted(tok, tok, side="left")  # tok is sorted: first firing of this token
        n = per_tok[tok]  # [M] firings on this entry's token
        a = lat.repeat_interleave(n)
        first = starts.repeat_interleave(n)
        j = torch.arange(len(a), device=tok.device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        b = lat[first + j]
        if (lo, hi) != (0, L):
            mine = (a >= lo) & (a < hi)
            a, b = a[mine], b[mine]
        self.cooc.add(a - lo, b)

    # ------------------------------------------------------------------ merge

    def merge(self, other: HarvestState) -> None:
        """Fold another state (another shard of the data) into this one."""
        if asdict(other.cfg) != asdict(self.cfg):
            raise ValueError("cannot merge harvest states with different configs")
        self.n_tokens += other.n_tokens
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

    def _merge_buffers(self, val, loc, win, extra, o_val, o_loc, o_win, o_extra, largest):
        r, s = torch.nonzero(o_loc >= 0, as_tuple=True)
        if len(r) == 0:
            return
        rows, prov, cand = merge_rows(val, loc, r, o_val[r, s], o_loc[r, s], largest)
        K = val.shape[1]
        old = prov.clamp(max=K - 1)
        w = win[rows].gather(1, old[..., None].expand(-1, -1, win.shape[2]))
        nu, nj = torch.nonzero(cand >= 0, as_tuple=True)
        ci = cand[nu, nj]
        w[nu, nj] = o_win[r[ci], s[ci]]
        win[rows] = w
        if extra is not None:
            e = extra[rows].gather(1, old)
            e[nu, nj] = o_extra[r[ci], s[ci]]
            extra[rows] = e

    # ------------------------------------------------------------------ persistence

    def tensors(self) -> dict[str, Tensor]:
        t = {
            name: getattr(self, name)
            for name in ("n_tokens", "count", "act_sum", "act_max", "hist", "top_val", "top_loc", "top_win",
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
            diff = sorted(k for k, v in asdict(expect).items() if info["config"].get(k) != v)
            raise UserError(f"checkpoint {path} was made with a different config ({', '.join(diff)}) -- use the same options or a new --out")
        state = cls(cfg, device)
        for name, t in tensors.items():
            if "." not in name:
                getattr(state, name).copy_(t)
        for counter in ("in_tok", "cooc", "out_tok"):
            pc = getattr(state, counter)
            if pc is not None:
                pc.load_tensors(counter, tensors)
        return state, info["meta"]
