"""Pair tables (latent x token, latent x latent) in JAX: the two modes of engine.harvest.pair_counts.

A table is a dict of arrays named as `PairCounter.tensors(prefix)` writes them:

* dense:  {"table": [R, V]} exact (float64 token mass, int64 co-firing counts);
* sketch: {"keys": [R, slots] int64 column or -1, "weights": [R, slots] float64, "err": [R] float64},
  the mergeable Misra-Gries summary (see pair_counts.py for the guarantee err <= total / (slots + 1)).

`add` is the same fixed-shape update as `PairCounter.add` (rows < 0 are padding); the sketch step
is `PairCounter._absorb` step for step (one stable sort of the M new triples and the R * slots kept
entries, per-row ranking by weight with ties by column), so both backends keep the same entries.
"""

from __future__ import annotations

import jax.numpy as jnp

from engine.harvest.pair_counts import choose_mode

I64_MAX = jnp.iinfo(jnp.int64).max


def init_pairs(rows: int, cols: int, budget_bytes: int, slots: int, dense_dtype=jnp.float64) -> dict:
    """Empty table in the mode the torch state would choose (pair_counts.choose_mode)."""
    if choose_mode(rows, cols, budget_bytes) == "dense":
        return {"table": jnp.zeros((rows, cols), dense_dtype)}
    return {"keys": jnp.full((rows, slots), -1, jnp.int64), "weights": jnp.zeros((rows, slots), jnp.float64),
            "err": jnp.zeros(rows, jnp.float64)}


def add(t: dict, rows, cols, weights, n_cols: int) -> dict:
    """Add weights [M] to (rows [M], cols [M]); rows < 0 add nothing. Returns the new table."""
    if "table" in t:
        tab = t["table"]
        w = jnp.where(rows >= 0, weights, 0).astype(tab.dtype)
        return {"table": tab.at[jnp.maximum(rows, 0), jnp.clip(cols, 0, n_cols - 1)].add(w)}
    return absorb(t, rows, cols, jnp.where(rows >= 0, weights.astype(jnp.float64), 0.0), n_cols)


def absorb(t: dict, rows, cols, weights, n_cols: int) -> dict:
    """Misra-Gries merge of triples into every row (pair_counts.PairCounter._absorb)."""
    keys0, w0, err = t["keys"], t["weights"], t["err"]
    R, S = keys0.shape
    V = n_cols
    old_r = jnp.broadcast_to(jnp.arange(R)[:, None], (R, S)).reshape(-1)
    live = keys0.reshape(-1) >= 0
    r = jnp.concatenate([rows, jnp.where(live, old_r, -1)])  # [n = M + R S]
    c = jnp.concatenate([cols, jnp.maximum(keys0.reshape(-1), 0)])
    w = jnp.concatenate([weights, w0.reshape(-1)])
    n = r.shape[0]
    # sum duplicates: one segment per distinct key row * V + col (padding sorts last)
    key = jnp.where(r >= 0, r * V + c, I64_MAX)
    order = jnp.argsort(key, stable=True)
    key = key[order]
    first = jnp.concatenate([jnp.ones(1, bool), key[1:] != key[:-1]])
    seg = jnp.cumsum(first) - 1  # [n]
    wsum = jnp.zeros(n, jnp.float64).at[seg].add(w[order])
    skey = jnp.full(n, I64_MAX, jnp.int64).at[seg].set(key)
    valid = skey != I64_MAX
    sr = jnp.where(valid, skey // V, R)  # R: unused segment
    sc = jnp.where(valid, skey % V, 0)
    # rank within row by weight (descending), ties by column (the segments are column-ordered)
    o = jnp.argsort(wsum, descending=True, stable=True)
    o = o[jnp.argsort(sr[o], stable=True)]
    sr, sc, wsum = sr[o], sc[o], wsum[o]
    rank = jnp.arange(n) - jnp.searchsorted(sr, sr, side="left")
    at_thr = rank == S  # the (S+1)-th weight of each overflowing row
    thresh = jnp.zeros(R + 1, jnp.float64).at[jnp.where(at_thr, sr, R)].set(jnp.where(at_thr, wsum, 0.0))
    kept = wsum - thresh[sr]
    keep = (sr < R) & (rank < S) & (kept > 0)
    at_r, at_s = jnp.where(keep, sr, R), jnp.where(keep, rank, S)
    new_keys = jnp.full((R + 1, S + 1), -1, jnp.int64).at[at_r, at_s].set(jnp.where(keep, sc, -1))
    new_w = jnp.zeros((R + 1, S + 1), jnp.float64).at[at_r, at_s].set(jnp.where(keep, kept, 0.0))
    return {"keys": new_keys[:R, :S], "weights": new_w[:R, :S], "err": err + thresh[:R]}
