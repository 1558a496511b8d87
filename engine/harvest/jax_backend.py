"""JAX backend: the harvest accumulator update in jax.numpy / lax, for TPUs and Flax models.

    from engine.harvest.jax_backend import JaxHarvester
    h = JaxHarvester(W_enc, b_enc, b_dec=b_dec, k=32, cfg=StateConfig(...))   # TopK / ReLU dictionary
    for tokens, acts in flax_loop():            # jnp arrays [B, S], [B, S, d]
        h.update(acts, tokens)
    state = h.to_torch()                          # a HarvestState: merge, save, build_results as usual

The update is one jitted function over a pytree of fixed-shape arrays, the same
algorithm as `engine.harvest.state.HarvestState` (segment sums with `.at[].add/max`,
per-latent selection by stable sorts, `lax` gathers, the same splitmix64
reservoir keys), so its result equals the torch state on the same activations
(tests/test_jax_backend.py). Firings are packed to a fixed capacity (N * k for
TopK, N * max_per_token otherwise) so shapes never depend on the data.
Covered: counts, sums, maxima, histograms, top-K and reservoir samples with
windows, input-token and co-occurrence tables (dense). Not yet: output-token
statistics and the sketch mode for huge tables (use the torch path for those).
"""

from __future__ import annotations

from functools import partial

import numpy as np

try:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # int64 locations and splitmix64 keys, float64 sums
except ImportError as e:  # pragma: no cover - exercised by the skip in tests
    raise ImportError("the JAX backend needs jax: pip install 'autointerp-engine[jax]'") from e

import torch

from engine.harvest.state import HarvestState, StateConfig

_M = (1 << 64) - 1


def _s64(c: int) -> int:
    c &= _M
    return c - (1 << 64) if c >= 1 << 63 else c


def _mix64(x):
    def srl(v, n):
        return (v >> n) & ((1 << (64 - n)) - 1)

    x = x + _s64(0x9E3779B97F4A7C15)
    x = (x ^ srl(x, 30)) * _s64(0xBF58476D1CE4E5B9)
    x = (x ^ srl(x, 27)) * _s64(0x94D049BB133111EB)
    return x ^ srl(x, 31)


def reservoir_keys(loc, lat, n_latents: int, seed: int):
    h = _mix64(_mix64(loc * n_latents + lat) + seed)
    return ((h >> 40) & ((1 << 24) - 1)).astype(jnp.float32) * (1.0 / (1 << 24))


def init_state(cfg: StateConfig) -> dict:
    L, V, K, R, W2 = cfg.n_latents, cfg.vocab_size, cfg.top_k, cfg.n_random, 2 * cfg.window + 1
    return {
        "n_tokens": jnp.zeros((), jnp.int64), "count": jnp.zeros(L, jnp.int64), "act_sum": jnp.zeros(L, jnp.float64),
        "act_max": jnp.zeros(L, jnp.float32), "hist": jnp.zeros((L, cfg.n_bins), jnp.int64),
        "top_val": jnp.full((L, K), -jnp.inf, jnp.float32), "top_loc": jnp.full((L, K), -1, jnp.int64),
        "top_win": jnp.zeros((L, K, W2), jnp.float32),
        "res_key": jnp.full((L, R), jnp.inf, jnp.float32), "res_loc": jnp.full((L, R), -1, jnp.int64),
        "res_val": jnp.zeros((L, R), jnp.float32), "res_win": jnp.zeros((L, R, W2), jnp.float32),
        "tok_total": jnp.zeros(V, jnp.int64), "in_tok": jnp.zeros((L, V), jnp.float64), "cooc": jnp.zeros((L, L), jnp.float64),
    }


def pack_firings(acts, capacity: int):
    """acts [N, L] -> (tok [C], lat [C], val [C]) sorted by (tok, lat); padding has lat = -1 at the end."""
    N, L = acts.shape
    flat = acts.reshape(-1)
    fire = flat > 0
    # Firing indices first, in (tok, lat) order; nonzero with a static size pads with -1.
    (idx,) = jnp.nonzero(fire, size=capacity, fill_value=-1)
    ok = idx >= 0
    safe = jnp.where(ok, idx, 0)
    return jnp.where(ok, safe // L, -1), jnp.where(ok, safe % L, -1), jnp.where(ok, flat[safe], 0.0)


def _windows(keys, vals, L, q_tok, q_lat, W, S):
    offs = jnp.arange(-W, W + 1)
    t = q_tok[:, None] + offs
    same = (t >= 0) & (t // S == (q_tok // S)[:, None])
    want = jnp.maximum(t, 0) * L + q_lat[:, None]
    pos = jnp.clip(jnp.searchsorted(keys, want.reshape(-1)).reshape(want.shape), 0, keys.shape[0] - 1)
    return jnp.where((keys[pos] == want) & same, vals[pos], 0.0).astype(jnp.float32)


def _merge(buf_val, buf_loc, buf_win, buf_extra, lat, score, loc, extra, win_fn, ok, largest: bool):
    """Per-latent best-K of old entries and this batch's candidates (same order rules as the torch state)."""
    L, K = buf_val.shape
    M = lat.shape[0]
    neg = -jnp.inf if largest else jnp.inf
    s = jnp.where(ok, score, neg)
    seg = jnp.where(ok, lat, L)  # padding goes to a trash segment L
    o = jnp.argsort(loc, stable=True)
    o = o[jnp.argsort(-s[o] if largest else s[o], stable=True)]
    o = o[jnp.argsort(seg[o], stable=True)]
    seg_o = seg[o]
    rank = jnp.arange(M) - jnp.searchsorted(seg_o, seg_o, side="left")
    keep = (rank < K) & (seg_o < L)
    r = jnp.where(keep, seg_o, L)  # row L is dropped below
    c = jnp.where(keep, rank, 0)
    cand_val = jnp.full((L + 1, K), neg, jnp.float32).at[r, c].set(jnp.where(keep, s[o], neg))[:L]
    cand_loc = jnp.full((L + 1, K), -1, jnp.int64).at[r, c].set(jnp.where(keep, loc[o], -1))[:L]
    cand_idx = jnp.full((L + 1, K), -1, jnp.int64).at[r, c].set(jnp.where(keep, o, -1))[:L]
    both_val = jnp.concatenate([buf_val, cand_val], axis=1)  # [L, 2K]
    both_loc = jnp.concatenate([buf_loc, cand_loc], axis=1)
    loc_key = jnp.where(both_loc < 0, jnp.iinfo(jnp.int64).max, both_loc)
    p = jnp.argsort(loc_key, axis=1, stable=True)
    v = jnp.take_along_axis(both_val, p, 1)
    p = jnp.take_along_axis(p, jnp.argsort(-v if largest else v, axis=1, stable=True), 1)[:, :K]  # [L, K]
    new_val = jnp.take_along_axis(both_val, p, 1)
    new_loc = jnp.take_along_axis(both_loc, p, 1)
    from_old = p < K
    old_slot = jnp.minimum(p, K - 1)
    ci = jnp.take_along_axis(jnp.concatenate([jnp.full_like(cand_idx, -1), cand_idx], 1), p, 1)  # [L, K]
    rows = jnp.broadcast_to(jnp.arange(L)[:, None], (L, K))
    win_new = win_fn(jnp.maximum(ci, 0).reshape(-1), rows.reshape(-1)).reshape(L, K, -1)
    win_old = jnp.take_along_axis(buf_win, old_slot[..., None], 1)
    new_win = jnp.where((from_old | (ci < 0))[..., None], win_old, win_new)
    new_extra = None
    if buf_extra is not None:
        e_old = jnp.take_along_axis(buf_extra, old_slot, 1)
        new_extra = jnp.where(from_old, e_old, jnp.where(ci >= 0, extra[jnp.maximum(ci, 0)], 0.0))
        new_extra = jnp.where(new_loc < 0, 0.0, new_extra)
    return new_val, new_loc, new_win, new_extra


@partial(jax.jit, static_argnames=("cfg",))
def update(state: dict, tokens, tok, lat, val, seq_ids, valid, cfg: StateConfig) -> dict:
    """Fold one batch. tokens [B, S]; firings (tok, lat, val) [C] sorted by (tok, lat) with lat=-1 padding."""
    B, S = tokens.shape
    L, nb = cfg.n_latents, cfg.n_bins
    flat_tokens = tokens.reshape(-1)
    flat_valid = valid.reshape(-1)
    ok = (lat >= 0) & flat_valid[jnp.maximum(tok, 0)] & (val > 0)
    lat_s = jnp.where(ok, lat, 0)
    tok_s = jnp.where(ok, tok, 0)
    one = ok.astype(jnp.int64)
    st = dict(state)
    st["n_tokens"] = state["n_tokens"] + flat_valid.sum()
    st["tok_total"] = state["tok_total"].at[flat_tokens].add(flat_valid.astype(jnp.int64))
    st["count"] = state["count"].at[lat_s].add(one)
    st["act_sum"] = state["act_sum"].at[lat_s].add(jnp.where(ok, val, 0.0).astype(jnp.float64))
    st["act_max"] = state["act_max"].at[lat_s].max(jnp.where(ok, val, 0.0).astype(jnp.float32))
    scale = nb / (cfg.hist_hi - cfg.hist_lo)
    bins = jnp.clip(jnp.floor((jnp.log10(jnp.where(ok, val, 1.0).astype(jnp.float32)) - cfg.hist_lo) * scale).astype(jnp.int64), 0, nb - 1)
    st["hist"] = state["hist"].reshape(-1).at[lat_s * nb + bins].add(one).reshape(L, nb)
    loc = seq_ids[tok_s // S] * S + tok_s % S
    keys = jnp.where(ok, tok_s * L + lat_s, jnp.iinfo(jnp.int64).max)  # sorted: firings are (tok, lat) ordered
    order = jnp.argsort(keys, stable=True)
    keys_sorted, vals_sorted = keys[order], val[order].astype(jnp.float32)

    def win_fn(ci, rows):
        return _windows(keys_sorted, vals_sorted, L, tok_s[ci], rows, cfg.window, S)

    v32 = val.astype(jnp.float32)
    st["top_val"], st["top_loc"], st["top_win"], _ = _merge(
        state["top_val"], state["top_loc"], state["top_win"], None, lat_s, v32, loc, None, win_fn, ok, True)
    rkey = reservoir_keys(loc, lat_s, L, cfg.seed)
    st["res_key"], st["res_loc"], st["res_win"], st["res_val"] = _merge(
        state["res_key"], state["res_loc"], state["res_win"], state["res_val"], lat_s, rkey, loc, v32, win_fn, ok, False)
    w = ok.astype(jnp.float64)
    st["in_tok"] = state["in_tok"].at[lat_s, flat_tokens[tok_s]].add(w)
    F = jnp.zeros((B * S, L), jnp.float32).at[tok_s, lat_s].max(ok.astype(jnp.float32))
    st["cooc"] = state["cooc"] + (F.T @ F).astype(jnp.float64)
    return st


class JaxHarvester:
    """Encode (ReLU / TopK) and accumulate in JAX; `to_torch()` hands the state to the rest of the engine."""

    def __init__(self, cfg: StateConfig, W_enc=None, b_enc=None, *, b_dec=None, k: int = 0, max_per_token: int = 128):
        if cfg.output_stats:
            raise ValueError("the JAX backend has no output-token statistics yet: use StateConfig(output_stats=False)")
        self.cfg, self.k, self.max_per_token = cfg, k, max_per_token
        self.W_enc = None if W_enc is None else jnp.asarray(W_enc, jnp.float32)
        self.b_enc = None if b_enc is None else jnp.asarray(b_enc, jnp.float32)
        self.b_dec = None if b_dec is None else jnp.asarray(b_dec, jnp.float32)
        self.state = init_state(cfg)
        self._next_seq = 0

    def encode(self, x):
        """x [N, d] -> dense activations [N, L] (the torch Dictionary's formulas)."""
        if self.b_dec is not None:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if not self.k:
            return jnp.maximum(pre, 0.0)
        vals, idx = jax.lax.top_k(pre, self.k)
        return jnp.zeros_like(pre).at[jnp.arange(pre.shape[0])[:, None], idx].set(jnp.maximum(vals, 0.0))

    def update(self, acts, tokens, *, valid=None, seq_ids=None, encoded: bool = False) -> None:
        """acts [B, S, d] (or already-encoded [B, S, L] with encoded=True), tokens [B, S]."""
        tokens = jnp.asarray(tokens, jnp.int64)
        B, S = tokens.shape
        a = jnp.asarray(acts, jnp.float32).reshape(B * S, -1)
        dense = a if encoded else self.encode(a)
        cap = B * S * (self.k or min(self.cfg.n_latents, self.max_per_token))
        tok, lat, val = pack_firings(dense, cap)
        if seq_ids is None:
            seq_ids = jnp.arange(self._next_seq, self._next_seq + B, dtype=jnp.int64)
        self._next_seq = int(np.max(np.asarray(seq_ids))) + 1
        valid = jnp.ones((B, S), bool) if valid is None else jnp.asarray(valid, bool)
        self.state = update(self.state, tokens, tok, lat, val, jnp.asarray(seq_ids, jnp.int64), valid, self.cfg)

    def to_torch(self, device="cpu") -> HarvestState:
        hs = HarvestState(self.cfg, device)
        if hs.in_tok.mode != "dense" or hs.cooc.mode != "dense":
            raise ValueError("the JAX backend keeps dense pair tables: raise pair_budget_bytes")
        for name, arr in self.state.items():
            t = torch.from_numpy(np.asarray(arr).copy())
            target = hs.in_tok.table if name == "in_tok" else hs.cooc.table if name == "cooc" else getattr(hs, name)
            target.copy_(t.to(target.dtype))
        return hs
