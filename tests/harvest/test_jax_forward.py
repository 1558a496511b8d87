"""The JAX forward's hookpoint activations and logits match the HF torch model's (captured by the torch
path's own hooks, engine.harvest.sources.HookedModel) for every supported family, on small random configs
saved with save_pretrained; and the JAX encodes match Dictionary.encode_dense and Dictionary.encode (rows,
spill and overflow)."""

import numpy as np
import pytest
import torch

pytest.importorskip("jax", reason="jax not installed: pip install -e '.[jax]' to run the JAX backend tests")

import jax.numpy as jnp
import transformers

from engine.harvest.firings import SPILL_SHARE, concat
from engine.harvest.jax.encode import dict_params, dict_static, encode_all, encode_dense, encode_rows, offsets_of
from engine.harvest.jax.forward import forward
from engine.harvest.jax.weights import capture_point, load_params, meta_model, model_spec, rope_tables, sites
from engine.harvest.sources import HookedModel

SMALL = {"vocab_size": 61, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64}
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 5}),  # S = 11 > window: the band mask is exercised
    "qwen2": ("Qwen2Config", {"use_sliding_window": False}),  # q/k/v biases
    "gemma": ("GemmaConfig", {}),
    "gemma2": ("Gemma2Config", {"sliding_window": 5, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
                                "query_pre_attn_scalar": 16}),
}
HOOKS = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid",
         "blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_matches_hf(family, tmp_path):
    name, extra = FAMILIES[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, name)(**SMALL, **extra)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # norms away from their init (ones / zeros) so a wrong offset shows
        for n, p in hf.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.05))
            if n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    hf.save_pretrained(tmp_path)
    hooks = HOOKS + (["layers.0.pre_feedforward_layernorm@in"] if family == "gemma2" else [])
    hooked = HookedModel(hf, hooks)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    ref, ref_logits = hooked.run(ids, need_logits=True)

    hf_cfg, meta = meta_model(str(tmp_path))
    spec = model_spec(hf_cfg)
    pts = [capture_point(s, spec) for s in sites(meta, hooks, [False] * len(hooks))]
    params = load_params(str(tmp_path), spec, spec.n_layers, "float32", head=True)
    acts, logits = forward(params, rope_tables(hf_cfg, spec), jnp.asarray(ids.numpy()), spec, tuple(set(pts)), True)
    for h, pt in zip(hooks, pts):  # float32 both sides; 1e-5 of the activation scale covers the rounding
        r = ref[h].numpy()
        np.testing.assert_allclose(np.asarray(acts[pt]), r, rtol=1e-4, atol=1e-5 * np.abs(r).max(), err_msg=f"{family} {h}")
    r = ref_logits.numpy()
    np.testing.assert_allclose(np.asarray(logits), r, rtol=1e-4, atol=1e-5 * np.abs(r).max(), err_msg=f"{family} logits")
    if family == "gemma2":  # post-norm family: the true residual mid-point is pre_feedforward_layernorm's input
        assert pts[-1] == pts[3] == (0, "resid_mid")  # hook_resid_mid is that input too
        assert pts[2] == (0, "attn_normed") and pts[6] == (1, "mlp_normed")  # the sublayers' residual writes


def _dictionary(activation, d=6, L=20, **kw):
    from engine.harvest.dictionaries import Dictionary

    g = torch.Generator().manual_seed(2)
    W, b, bd = torch.randn(d, L, generator=g), torch.randn(L, generator=g) * 0.5, torch.randn(d, generator=g)
    extra = {}
    if activation == "jumprelu":
        extra["threshold"] = torch.rand(L, generator=g)
    if activation == "gated":
        extra.update(b_gate=torch.randn(L, generator=g), b_mag=torch.randn(L, generator=g), r_mag=torch.randn(L, generator=g) * 0.1)
    return Dictionary("mem", f"test:{activation}", None, W, b, bd, extra.pop("threshold", None), activation,
                      4 if activation == "topk" else 0, None, d, L, **extra, **kw)


def _jax_firings(idx, val, spill):
    """JAX rows + spill -> (tok, lat) slots in the torch Firings layout (rows t * P + j, then the spill), lat -1 padding."""
    idx, val = np.asarray(idx), np.asarray(val)
    N, P = idx.shape
    tok = np.concatenate([np.repeat(np.arange(N), P), np.asarray(spill[0])])
    lat = np.concatenate([np.where(val > 0, idx, -1).reshape(-1), np.asarray(spill[1])])
    return tok, lat, np.concatenate([np.where(val > 0, val, 0).reshape(-1), np.asarray(spill[2])])


ENCODES = [("topk", {}), ("relu", {"input_norm": "layer_norm"}), ("jumprelu", {}),
           ("gated", {"input_norm": "constant_norm_rescale", "input_scale": 0.7})]


@pytest.mark.parametrize("per_token", [8, 2])  # 8: the spill holds every firing beyond the rows; 2: it overflows
@pytest.mark.parametrize("activation,kw", ENCODES)
def test_encode_matches_torch_dictionary(activation, kw, per_token):
    d = _dictionary(activation, **kw)
    d.firings_per_token = per_token
    x = torch.randn(15, 6, generator=torch.Generator().manual_seed(3))
    ref = d.encode_dense(x)
    got = np.asarray(encode_dense(dict_params(d), jnp.asarray(x.numpy()), dict_static(d)))
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)
    idx, val, over, spill = encode_rows(dict_params(d), jnp.asarray(x.numpy()), dict_static(d))
    f = d.encode(x)  # the torch firings, rows and spill: the same slots, the same overflow
    assert len(spill[0]) == f.spilled == (0 if activation == "topk" else 15 * per_token // SPILL_SHARE)
    tok, lat, v = _jax_firings(idx, val, spill)
    ft, fl = f.tok.numpy(), f.lat.numpy()
    assert np.array_equal(lat, fl) and np.array_equal(tok[lat >= 0], ft[fl >= 0])
    np.testing.assert_allclose(v[lat >= 0], f.val.numpy()[fl >= 0], rtol=1e-5, atol=1e-5)
    mine = {(int(t), int(i)) for t, i in zip(tok, lat) if i >= 0}
    theirs = {(int(t), int(i)) for t, i in zip(ft, fl) if i >= 0}
    assert mine == theirs and len(mine) > 0
    over_t = int(f.overflow) if f.overflow is not None else 0
    assert int(over) == over_t
    if activation != "topk":  # nothing lost but what the spill could not hold
        assert len(mine) + over_t == int((ref > 0).sum())
        assert (over_t > 0) == (per_token == 2) and (np.asarray(spill[1]) >= 0).any()


def test_encode_all_matches_torch_concat():
    """Two dictionaries: rows side by side, then each one's spill with its global latent ids (firings.concat)."""
    ds = [_dictionary("relu", input_norm="layer_norm"), _dictionary("jumprelu")]
    for d, pt in zip(ds, (5, 3)):
        d.firings_per_token = pt
    x = torch.randn(15, 6, generator=torch.Generator().manual_seed(4))
    offs = offsets_of(ds)
    idx, val, over, spill = encode_all([dict_params(d) for d in ds], [jnp.asarray(x.numpy())] * 2,
                                       tuple(dict_static(d) for d in ds), offs)
    f = concat([d.encode(x).with_offset(o) for d, o in zip(ds, offs)])
    tok, lat, v = _jax_firings(idx, val, spill)
    fl = f.lat.numpy()
    assert np.array_equal(lat, fl) and np.array_equal(tok[lat >= 0], f.tok.numpy()[fl >= 0])
    np.testing.assert_allclose(v[lat >= 0], f.val.numpy()[fl >= 0], rtol=1e-5, atol=1e-5)
    assert len(spill[0]) == f.spilled > 0 and (fl[-f.spilled:] >= 20).any()  # the second's spill: offset ids
    assert int(over) == int(f.overflow) > 0
