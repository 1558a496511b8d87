"""The harvest state in JAX: every statistic of engine.harvest.state.HarvestState, one jitted update.

The state is a flat dict of fixed-shape arrays named exactly as `HarvestState.tensors()` names
them (`count`, `top_win`, `in_tok.table` or `in_tok.keys`/`.weights`/`.err`, ...), so converting
to the torch state (engine.harvest.jax.convert) is a copy, and the torch checkpoint format,
merge and results writer serve both backends.

`update` folds one batch of firings in per-token rows (idx, val [N, P]: token t's P slots,
val <= 0 padding; the layout every JAX encode emits) plus the batch's spill (the firings beyond
their token's P, engine.harvest.jax.encode) with the torch state's algorithm. The spill's slots
follow the N P row slots and feed every per-latent statistic (counts, sums, maxima, histogram,
top-K, reservoir, token tables); co-occurrence is built from the row slots alone, as
HarvestState.update does with Firings.spilled. The algorithm:
segment sums with `.at[].add/max`, per-latent best-K by stable sorts (score, then location),
the same splitmix64 reservoir keys, windows by binary search in the batch's sorted
(token, latent) keys, token tables and co-firing through engine.harvest.jax.pairs (dense or
Misra-Gries sketch, chosen by the same budget rule). Shapes depend only on (B, S, P, C_s, L, V), so
the update traces once and never synchronises with the host.

Needs 64-bit types (int64 locations and keys, float64 sums): importing this package turns on
`jax_enable_x64`; model and dictionary math stay float32/bfloat16 by explicit dtypes.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from engine.harvest.jax import pairs
from engine.harvest.state import StateConfig
from engine.harvest.subsample import SALT

_M = (1 << 64) - 1
I64_MAX = jnp.iinfo(jnp.int64).max


def _s64(c: int) -> int:
    c &= _M
    return c - (1 << 64) if c >= 1 << 63 else c


def _mix64(x):
    """splitmix64 finaliser on int64 (wrapping arithmetic; logical shifts emulated), as firings.mix64."""
    def srl(v, n):
        return (v >> n) & ((1 << (64 - n)) - 1)

    x = x + _s64(0x9E3779B97F4A7C15)
    x = (x ^ srl(x, 30)) * _s64(0xBF58476D1CE4E5B9)
    x = (x ^ srl(x, 27)) * _s64(0x94D049BB133111EB)
    return x ^ srl(x, 31)


def reservoir_keys(loc, lat, n_latents: int, seed: int):
    """firings.reservoir_keys: i.i.d. uniform keys in [0, 1) as a pure function of (loc, lat, seed)."""
    h = _mix64(_mix64(loc * n_latents + lat) + seed)
    return ((h >> 40) & ((1 << 24) - 1)).astype(jnp.float32) * (1.0 / (1 << 24))


def check_config(cfg: StateConfig) -> None:
    if cfg.rows != (0, cfg.n_latents):
        raise ValueError("the JAX state keeps every latent (no --latent-parallel row range)")


def init_state(cfg: StateConfig) -> dict:
    """Empty state: the arrays of HarvestState(cfg).tensors(), same names, shapes and dtypes."""
    check_config(cfg)
    L, V, K, R, W2 = cfg.n_latents, cfg.vocab_size, cfg.top_k, cfg.n_random, 2 * cfg.window + 1
    st = {
        "n_tokens": jnp.zeros((), jnp.int64), "overflow": jnp.zeros((), jnp.int64),
        "cooc_excess": jnp.zeros((), jnp.int64),
        "count": jnp.zeros(L, jnp.int64), "act_sum": jnp.zeros(L, jnp.float64), "act_max": jnp.zeros(L, jnp.float32),
        "hist": jnp.zeros((L, cfg.n_bins), jnp.int64),
        "top_val": jnp.full((L, K), -jnp.inf, jnp.float32), "top_loc": jnp.full((L, K), -1, jnp.int64),
        "top_win": jnp.zeros((L, K, W2), jnp.float32),
        "res_key": jnp.full((L, R), jnp.inf, jnp.float32), "res_loc": jnp.full((L, R), -1, jnp.int64),
        "res_val": jnp.zeros((L, R), jnp.float32), "res_win": jnp.zeros((L, R, W2), jnp.float32),
        "tok_total": jnp.zeros(V, jnp.int64), "out_total": jnp.zeros(V if cfg.output_stats else 0, jnp.float64),
    }
    tables = {"in_tok": pairs.init_pairs(L, V, cfg.pair_budget_bytes, cfg.token_slots),
              "cooc": pairs.init_pairs(L, L, cfg.pair_budget_bytes, cfg.cooc_slots, dense_dtype=jnp.int64)}
    if cfg.output_stats:
        tables["out_tok"] = pairs.init_pairs(L, V, cfg.pair_budget_bytes, cfg.token_slots)
    for prefix, t in tables.items():
        st.update({f"{prefix}.{k}": v for k, v in t.items()})
    return st


def table(state: dict, prefix: str) -> dict:
    """The pair table `prefix` of a state, as engine.harvest.jax.pairs takes it."""
    return {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(prefix + ".")}


def _windows(keys, vals, L, q_tok, q_lat, W, S):
    """Activation of latent q_lat on the ±W tokens around q_tok (0 outside its sequence): [Q, 2W+1]."""
    offs = jnp.arange(-W, W + 1)
    t = q_tok[:, None] + offs
    same = (t >= 0) & (t // S == (q_tok // S)[:, None])
    want = jnp.maximum(t, 0) * L + q_lat[:, None]
    pos = jnp.clip(jnp.searchsorted(keys, want.reshape(-1)).reshape(want.shape), 0, keys.shape[0] - 1)
    return jnp.where((keys[pos] == want) & same, vals[pos], 0.0).astype(jnp.float32)


def _merge(buf_val, buf_loc, buf_win, buf_extra, lat, score, loc, extra, win_fn, ok, largest: bool):
    """Per-latent best-K of the kept entries and this batch's candidates, ordered by score then location
    (the order of kernels.topk_merge); entries that enter get their windows, kept ones move with theirs."""
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
    loc_key = jnp.where(both_loc < 0, I64_MAX, both_loc)
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


def update(state: dict, tokens, idx, val, overflow, seq_ids, valid, next_top, next_mass, cfg: StateConfig,
           spill=None) -> dict:
    """Fold one batch in (trace inside jit; `update_jit` is the jitted form).

    tokens    [B, S] int   token ids
    idx, val  [N, P]       firings per token (N = B S): global latent ids and activations, val <= 0 padding
    overflow  []  int64    firings dropped (past the rows and the spill)
    seq_ids   [B] int64    rows of the token store
    valid     [B, S] bool  positions that count
    next_top  ([N, T] int ids, [N, T] float probs) or None: top next-token predictions (output stats)
    next_mass [V] float64 or None: next-token mass summed over valid positions
    spill     (tok [C_s] int flat position b S + s, lat [C_s] int global id or -1, val [C_s] float) or None:
              the firings beyond their token's P; every statistic but co-occurrence takes them
    """
    _B, S = tokens.shape
    N, P = idx.shape
    L, nb = cfg.n_latents, cfg.n_bins
    flat_tokens = tokens.reshape(-1).astype(jnp.int64)
    flat_valid = valid.reshape(-1)
    tok = jnp.broadcast_to(jnp.arange(N)[:, None], (N, P)).reshape(-1)  # [N P] row slots, then the spill's
    lat = idx.reshape(-1).astype(jnp.int64)
    v = val.reshape(-1).astype(jnp.float32)
    if spill is not None:
        s_tok, s_lat, s_val = spill
        tok = jnp.concatenate([tok, jnp.clip(s_tok.astype(jnp.int64), 0, max(N - 1, 0))])
        lat = jnp.concatenate([lat, s_lat.astype(jnp.int64)])
        v = jnp.concatenate([v, s_val.astype(jnp.float32)])
    ok = (v > 0) & (lat >= 0) & flat_valid[tok]
    row = jnp.where(ok, lat, -1)
    v = jnp.where(ok, v, 0.0)
    at, one = jnp.maximum(row, 0), ok.astype(jnp.int64)
    st = dict(state)
    # counts, sums, maxima, histogram
    st["n_tokens"] = state["n_tokens"] + flat_valid.sum()
    st["overflow"] = state["overflow"] + overflow
    st["tok_total"] = state["tok_total"].at[flat_tokens].add(flat_valid.astype(jnp.int64))
    if cfg.output_stats and next_mass is not None:
        st["out_total"] = state["out_total"] + next_mass.astype(jnp.float64)
    st["count"] = state["count"].at[at].add(one)
    st["act_sum"] = state["act_sum"].at[at].add(v.astype(jnp.float64))
    st["act_max"] = state["act_max"].at[at].max(v)
    edges = jnp.asarray(cfg.hist_edges(), jnp.float64)  # the float64 edges config.json lists, as HarvestState
    bins = jnp.clip(jnp.searchsorted(edges, v.astype(jnp.float64), side="right") - 1, 0, nb - 1)
    st["hist"] = state["hist"].reshape(-1).at[at * nb + bins].add(one).reshape(L, nb)
    # top-K and reservoir, with windows from the batch's sorted (token, latent) keys
    loc = seq_ids.astype(jnp.int64)[tok // S] * S + tok % S  # [C = N P + C_s] global location
    keys = jnp.where(ok, tok * L + at, I64_MAX)
    order = jnp.argsort(keys, stable=True)
    keys_sorted, vals_sorted = keys[order], v[order]

    def win_fn(ci, rows):
        q = tok[ci]
        if not cfg.center_examples:  # the firing's fixed chunk, as core.examples.window_centre
            c, pos = 2 * cfg.window + 1, q % S
            mid = jnp.minimum(pos // c * c + cfg.window, S - 1)
            q = q - pos + mid
        return _windows(keys_sorted, vals_sorted, L, q, rows, cfg.window, S)

    top_ok = ok
    if cfg.top_chunk:  # at most one firing per latent per chunk of a sequence (HarvestState._one_per_chunk)
        n_chunks = -(-S // cfg.top_chunk)
        group = jnp.where(ok, ((tok // S) * n_chunks + (tok % S) // cfg.top_chunk) * L + at, I64_MAX)
        top_ok = ok & group_best(group, v)
    st["top_val"], st["top_loc"], st["top_win"], _ = _merge(
        state["top_val"], state["top_loc"], state["top_win"], None, at, v, loc, None, win_fn, top_ok, True)
    rkey = reservoir_keys(loc + cfg.seq_offset * S, row, L, cfg.seed)
    st["res_key"], st["res_loc"], st["res_win"], st["res_val"] = _merge(
        state["res_key"], state["res_loc"], state["res_win"], state["res_val"], at, rkey, loc, v, win_fn, ok, False)
    # token tables
    ones = jnp.ones(row.shape, jnp.float64)
    _put(st, "in_tok", pairs.add(table(state, "in_tok"), row, flat_tokens[tok], ones, cfg.vocab_size))
    if cfg.output_stats and next_top is not None:
        ids, probs = next_top
        T = ids.shape[1]
        rows_t = jnp.broadcast_to(row[:, None], (row.shape[0], T)).reshape(-1)
        _put(st, "out_tok", pairs.add(table(state, "out_tok"), rows_t, ids[tok].reshape(-1).astype(jnp.int64),
                                      probs[tok].reshape(-1).astype(jnp.float64), cfg.vocab_size))
    # co-firing from the row slots only (never the spill): dense F^T F of the binary firing matrix, or
    # every same-token pair into the sketch
    cooc = table(state, "cooc")
    n = N * P
    if "table" in cooc:
        F = jnp.zeros((N, L), jnp.float32).at[tok[:n], at[:n]].max(ok[:n].astype(jnp.float32))  # [N, L] (exact < 2^24)
        _put(st, "cooc", {"table": cooc["table"] + (F.T @ F).astype(jnp.int64)})
    else:
        lr = row[:n].reshape(N, P)
        if cfg.cooc_rate < 1:  # the positions of the uniform sample (engine.harvest.subsample), by location
            tok_loc = (seq_ids.astype(jnp.int64)[:, None] * S + jnp.arange(S)).reshape(-1) + cfg.seq_offset * S
            pkey = reservoir_keys(tok_loc, jnp.zeros_like(tok_loc), 1, cfg.seed + SALT)
            lr = jnp.where((pkey < cfg.cooc_rate)[:, None], lr, -1)
        a, b = jnp.broadcast_to(lr[:, :, None], (N, P, P)), jnp.broadcast_to(lr[:, None, :], (N, P, P))
        has = (a >= 0) & (b >= 0)  # the diagonal counts firings, as cooc_pairs_rows(include_self=True)
        _put(st, "cooc", pairs.add(cooc, jnp.where(has, a, -1).reshape(-1), jnp.maximum(b, 0).reshape(-1),
                                   jnp.ones(N * P * P, jnp.float64), L))
    return st


def group_best(group, val):
    """kernels.topk_merge.group_best: whether each candidate is its group's best (largest val, earliest index)."""
    M = group.shape[0]
    order = jnp.argsort(group, stable=True)
    g, v = group[order], val[order]
    first = jnp.concatenate([jnp.ones(1, bool), g[1:] != g[:-1]])
    seg = jnp.cumsum(first) - 1
    top = jnp.full(M, -jnp.inf, v.dtype).at[seg].max(v)
    earliest = jnp.full(M, M, order.dtype).at[seg].min(jnp.where(v == top[seg], order, M))
    return jnp.zeros(M, bool).at[order].set((order == earliest[seg]) & (g != I64_MAX))


def _put(st: dict, prefix: str, t: dict) -> None:
    st.update({f"{prefix}.{k}": v for k, v in t.items()})


update_jit = jax.jit(update, static_argnames=("cfg",))
"The jitted update for library use (a state from init_state; arrays as in `update`)."


@partial(jax.jit, static_argnames=("top", "vocab"))
def next_token_stats(logits, valid, top: int, vocab: int):
    """logits [N, V'] -> (top-T ids [N, T], probs [N, T]) and the [vocab] float64 marginal: the same top-T
    mass summed over valid positions (engine.harvest.harvester: softmax in float32, the marginal in float64,
    so a latent firing wherever t is predicted has precision 1)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top_p, top_id = jax.lax.top_k(probs, top)
    w = (top_p * valid.reshape(-1, 1)).reshape(-1).astype(jnp.float64)
    mass = jnp.zeros(vocab, jnp.float64).at[top_id.reshape(-1)].add(w)
    return (top_id, top_p), mass
