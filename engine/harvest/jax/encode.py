"""Dictionary encodes in JAX: a torch `Dictionary` -> arrays, and x [N, d_in] -> firing rows.

Every encode returns per-token rows (idx [N, P] latent ids, val [N, P], val <= 0 padding), the count
of firings dropped and the batch's spill, the same firings as `Dictionary.encode` (engine.harvest.firings):

* TopK (no subset): P = k, the k winners of the pre-activations; no spill;
* ReLU, JumpReLU, gated, identity (neurons), subset TopK: the P = min(L, firings_per_token) strongest
  of the dense activations in the rows; the positive ones beyond a token's P in the spill, C_s =
  spill_slots(N, P, L) fixed slots taken in flat (token, latent) order by a prefix sum (binary searches
  in it, so no [N L] scatter; empty slots: lat -1, val 0, tok 0); overflow counts those the spill could
  not hold.

The spill is (tok [C_s] flat batch position, lat [C_s] latent id or -1, val [C_s]); its C_s is a Python
int from the static shapes, so the encode traces once.

The input transforms (constant-norm rescale, layer norm, scale, b_dec subtraction) follow
`Dictionary.prepare`. SPD causal-importance dictionaries are refused (use --backend torch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from engine.core.errors import UserError
from engine.harvest.dictionaries import Dictionary
from engine.harvest.firings import spill_slots

SUPPORTED = ("relu", "jumprelu", "topk", "gated", "identity")


def _np(t):
    return None if t is None else jnp.asarray(t.detach().cpu().float().numpy())


def dict_params(d: Dictionary) -> dict:
    """The arrays of one dictionary (absent ones left out: the pytree structure encodes the variant)."""
    if d.activation not in SUPPORTED:
        raise UserError(f"dictionary {d.path}: --backend jax encodes {', '.join(SUPPORTED)}, not {d.activation} -- use --backend torch")
    names = ("W_enc", "b_enc", "b_dec_in", "threshold", "decoder_norm_scale", "b_gate", "b_mag", "r_mag")
    p = {n: _np(getattr(d, n)) for n in names if getattr(d, n) is not None}
    if d._select is not None:
        p["select"] = jnp.asarray(d._select.numpy())
    return p


def dict_static(d: Dictionary) -> tuple:
    """The hashable (jit-static) part: (activation, k, input_norm, input_scale, d_in, n_latents, per_token)."""
    return (d.activation, d.k, d.input_norm, float(d.input_scale), d.d_in, d.n_latents, d.firings_per_token)


def prepare(p: dict, x, static: tuple):
    _, _, norm, scale, d_in, _, _ = static
    x = x.astype(jnp.float32)
    if norm == "constant_norm_rescale":
        x = x * (d_in**0.5 / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8))
    elif norm == "layer_norm":
        x = (x - x.mean(-1, keepdims=True)) / (jnp.std(x, axis=-1, keepdims=True, ddof=1) + 1e-5)
    if scale != 1.0:
        x = x * scale
    if "b_dec_in" in p:
        x = x - p["b_dec_in"]
    return x


def encode_dense(p: dict, x, static: tuple):
    """[N, d_in] -> [N, L] float32 activations (Dictionary.encode_dense)."""
    act, k = static[0], static[1]
    x = prepare(p, x, static)
    if act == "identity":
        out = jnp.maximum(x, 0.0)
    elif act == "gated":
        gate = (x @ p["W_enc"] + p["b_gate"]) > 0
        out = jnp.maximum(x @ (p["W_enc"] * jnp.exp(p["r_mag"])) + p["b_mag"], 0.0) * gate
    else:
        pre = x @ p["W_enc"] + p["b_enc"]
        if act == "relu":
            out = jnp.maximum(pre, 0.0)
        elif act == "jumprelu":
            out = jnp.maximum(jnp.where(pre > p["threshold"], pre, 0.0), 0.0)
        else:
            if "decoder_norm_scale" in p:
                pre = pre * p["decoder_norm_scale"]
            val, idx = jax.lax.top_k(pre, k)
            out = jnp.zeros_like(pre).at[jnp.arange(pre.shape[0])[:, None], idx].set(jnp.maximum(val, 0.0))
    return out if "select" not in p else out[:, p["select"]]


def no_spill():
    """An empty spill (TopK, or rows that hold every latent)."""
    return jnp.zeros(0, jnp.int64), jnp.full(0, -1, jnp.int64), jnp.zeros(0, jnp.float32)


def spill(acts, idx, P: int):
    """acts [N, L], idx [N, P] each token's row -> (spill (tok, lat, val) [C_s], overflow [] int64): the positive
    activations outside their token's row, the first C_s in flat (token, latent) order (firings.strongest)."""
    N, L = acts.shape
    C = spill_slots(N, P, L)
    dt = jnp.int32 if N * L < 2**31 else jnp.int64  # int32 prefix sums halve the [N L] memory
    beyond = (acts > 0).at[jnp.arange(N)[:, None], idx].set(False).reshape(-1)  # [N L]
    upto = jnp.cumsum(beyond, dtype=dt)  # [N L] how many up to and including each entry
    total = beyond.sum(dtype=jnp.int64)
    want = jnp.arange(1, C + 1, dtype=dt)  # slot j holds the (j+1)-th: where the prefix sum first reaches j+1
    at = jnp.searchsorted(upto, want, side="left").astype(jnp.int64)  # C binary searches, no [N L] scatter
    got = want.astype(jnp.int64) <= total
    at = jnp.where(got, at, 0)
    s = (jnp.where(got, at // L, 0), jnp.where(got, at % L, -1), jnp.where(got, acts.reshape(-1)[at], 0.0))
    return s, jnp.maximum(total - C, 0)


def encode_rows(p: dict, x, static: tuple):
    """[N, d_in] -> (idx [N, P] int64, val [N, P] float32, overflow [] int64, spill (tok, lat, val) [C_s])."""
    act, k, *_, n_latents, per_token = static
    if act == "topk" and "select" not in p:
        pre = prepare(p, x, static) @ p["W_enc"] + p["b_enc"]
        if "decoder_norm_scale" in p:
            pre = pre * p["decoder_norm_scale"]
        val, idx = jax.lax.top_k(pre, k)
        return idx.astype(jnp.int64), val, jnp.zeros((), jnp.int64), no_spill()
    acts = encode_dense(p, x, static)
    P = min(per_token, n_latents)
    val, idx = jax.lax.top_k(acts, P)
    if P == n_latents:
        return idx.astype(jnp.int64), val, jnp.zeros((), jnp.int64), no_spill()
    s, over = spill(acts, idx, P)
    return idx.astype(jnp.int64), val, over, s


def encode_all(dps: list, xs: list, statics: tuple, offsets: tuple):
    """Several dictionaries on their hookpoints' [N, d] inputs -> one set of rows on the global latent axis
    (each token's slots side by side) and their spills one after the other, as firings.concat:
    (idx [N, sum P], val [N, sum P], overflow [], spill (tok, lat, val) [sum C_s])."""
    parts = [encode_rows(p, x, s) for p, x, s in zip(dps, xs, statics)]
    idx = jnp.concatenate([i + off for (i, *_), off in zip(parts, offsets)], axis=1)
    val = jnp.concatenate([v for _, v, _, _ in parts], axis=1)
    over = sum((o for _, _, o, _ in parts), jnp.zeros((), jnp.int64))
    sp = [s for *_, s in parts]
    s_tok = jnp.concatenate([t for t, _, _ in sp])
    s_lat = jnp.concatenate([jnp.where(lat >= 0, lat + off, -1) for (_, lat, _), off in zip(sp, offsets)])
    s_val = jnp.concatenate([v for _, _, v in sp])
    return idx, val, over, (s_tok, s_lat, s_val)


def offsets_of(dicts: list[Dictionary]) -> tuple[int, ...]:
    return tuple(int(x) for x in np.cumsum([0] + [d.n_latents for d in dicts])[:-1])
