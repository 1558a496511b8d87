"""The decoder forward in jax.numpy: Llama / Mistral / Qwen2 / Gemma / Gemma-2, with hookpoint captures.

    acts, logits = forward(params, rope, tokens, spec, points, need_logits)
    # tokens [B, S] int; points ((layer, name), ...) -> acts {(layer, name): [B, S, d]}; logits [B, S, V] or None

One pre-norm block per layer (HF's modeling code, eager attention):

    attn_in  = ln1(resid_pre);  attn_out = o(softmax(mask(cap(q k^T * scale))) v)      q, k with RoPE
    Llama:   resid_mid = resid_pre + attn_out;        mlp_in = ln2(resid_mid)
    Gemma-2: attn_normed = ln_post_attn(attn_out);    resid_mid = resid_pre + attn_normed
    mlp_post = act(gate mlp_in) * up mlp_in;  mlp_out = down mlp_post  (Gemma-2: mlp_normed = ln_post_mlp)
    resid_post = resid_mid + mlp_out (mlp_normed)

Capture points are the names above (`embed` for layer -1, the embedding output). Without logits
the loop stops after the last captured layer (the parameters beyond it need not be loaded).
Grouped-query attention repeats K/V heads; sliding-window layers see keys j > i - window. Norms
and softmax run in float32; matmuls in the parameter dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.harvest.jax.weights import ModelSpec


def rms_norm(x, w, spec: ModelSpec):
    """HF RMSNorm: float32 normalisation; Llama casts back before the weight, Gemma multiplies (1 + w) first."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + spec.eps)
    if spec.norm_offset:
        return (y * (spec.norm_offset + w.astype(jnp.float32))).astype(x.dtype)
    return w * y.astype(x.dtype)


def _linear(x, p: dict, name: str):
    y = x @ p[name].T
    return y + p[name + "_b"] if name + "_b" in p else y


def _rotate_half(x):
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_cos_sin(inv_freq, scale: float, S: int, dtype):
    """cos, sin [S, head_dim] as HF's rotary embedding (float32, then the activation dtype)."""
    freqs = jnp.arange(S, dtype=jnp.float32)[:, None] * inv_freq.astype(jnp.float32)[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return (jnp.cos(emb) * scale).astype(dtype), (jnp.sin(emb) * scale).astype(dtype)


def attention(x, p: dict, cos, sin, spec: ModelSpec, window: int):
    """x [B, S, d] (normalised) -> attention output [B, S, d] before any post-norm."""
    B, S, _ = x.shape
    H, KV, hd = spec.n_heads, spec.n_kv, spec.head_dim
    q = _linear(x, p, "q").reshape(B, S, H, hd)
    k = _linear(x, p, "k").reshape(B, S, KV, hd)
    v = _linear(x, p, "v").reshape(B, S, KV, hd)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    q = q * c + _rotate_half(q) * s
    k = k * c + _rotate_half(k) * s
    k, v = jnp.repeat(k, H // KV, axis=2), jnp.repeat(v, H // KV, axis=2)  # [B, S, H, hd]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * spec.attn_scale
    if spec.attn_softcap:
        scores = jnp.tanh(scores / spec.attn_softcap) * spec.attn_softcap
    i, j = jnp.arange(S)[:, None], jnp.arange(S)[None, :]
    allowed = (j <= i) & ((j > i - window) if window else True)
    scores = jnp.where(allowed, scores.astype(jnp.float32), -jnp.inf)
    w = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(B, S, H * hd)
    return _linear(out, p, "o")


def _act(x, kind: str):
    return jax.nn.silu(x) if kind == "silu" else jax.nn.gelu(x, approximate=True)


def block(h, p: dict, cos, sin, spec: ModelSpec, window: int, want: set[str]) -> tuple:
    """One decoder layer: resid_pre [B, S, d] -> (resid_post, {point: activation} for the points in want)."""
    got = {"resid_pre": h}
    got["attn_in"] = x = rms_norm(h, p["ln1"], spec)
    got["attn_out"] = a = attention(x, p, cos, sin, spec, window)
    if spec.post_norms:
        got["attn_normed"] = a = rms_norm(a, p["ln_post_attn"], spec)
    got["resid_mid"] = h = h + a
    got["mlp_in"] = x = rms_norm(h, p["ln2"], spec)
    got["mlp_post"] = m = _act(_linear(x, p, "gate"), spec.act) * _linear(x, p, "up")
    got["mlp_out"] = m = _linear(m, p, "down")
    if spec.post_norms:
        got["mlp_normed"] = m = rms_norm(m, p["ln_post_mlp"], spec)
    got["resid_post"] = h = h + m
    return h, {k: v for k, v in got.items() if k in want}


def forward(params: dict, rope: tuple, tokens, spec: ModelSpec, points: tuple, need_logits: bool):
    """tokens [B, S] -> ({(layer, point): [B, S, d]}, logits [B, S, V] float32 or None).

    rope: (inv_freq [head_dim/2], attention scaling: a Python float). Trace under jit with spec,
    points and need_logits static."""
    dtype = params["embed"].dtype
    h = params["embed"][tokens]
    if spec.embed_scale:  # Gemma: HF's scaled-embedding module, the scale in the weights' dtype
        h = h * jnp.asarray(spec.embed_scale, dtype)
    acts = {(-1, "embed"): h} if (-1, "embed") in points else {}
    last = spec.n_layers - 1 if need_logits else max([i for i, _ in points] + [-1])
    cos, sin = rope_cos_sin(rope[0], rope[1], tokens.shape[1], dtype)
    for i in range(last + 1):
        want = {name for layer, name in points if layer == i}
        h, got = block(h, params["layers"][i], cos, sin, spec, spec.windows[i], want)
        acts.update({(i, k): v for k, v in got.items()})
    if not need_logits:
        return acts, None
    logits = (rms_norm(h, params["norm"], spec) @ params["lm_head"].T).astype(jnp.float32)
    if spec.final_softcap:
        logits = jnp.tanh(logits / spec.final_softcap) * spec.final_softcap
    return acts, logits
