"""The JAX forward's hookpoint activations and logits match the HF torch model's (captured by the torch
path's own hooks, engine.harvest.sources.HookedModel) for every supported family, on small random configs
saved with save_pretrained; and the JAX encodes match Dictionary.encode_dense."""

import numpy as np
import pytest
import torch

pytest.importorskip("jax", reason="jax not installed: pip install -e '.[jax]' to run the JAX backend tests")

import jax.numpy as jnp
import transformers

from engine.harvest.jax.encode import dict_params, dict_static, encode_dense, encode_rows
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
        assert pts[-1] == (0, "resid_mid") and pts[3] == (0, "attn_out")


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


@pytest.mark.parametrize("activation,kw", [("topk", {}), ("relu", {"input_norm": "layer_norm"}), ("jumprelu", {}),
                                           ("gated", {"input_norm": "constant_norm_rescale", "input_scale": 0.7})])
def test_encode_matches_torch_dictionary(activation, kw):
    d = _dictionary(activation, **kw)
    d.firings_per_token = 5
    x = torch.randn(15, 6, generator=torch.Generator().manual_seed(3))
    ref = d.encode_dense(x)
    got = np.asarray(encode_dense(dict_params(d), jnp.asarray(x.numpy()), dict_static(d)))
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)
    idx, val, over = encode_rows(dict_params(d), jnp.asarray(x.numpy()), dict_static(d))
    f = d.encode(x)  # the torch firings: same (token, latent) set, same overflow
    mine = {(t, int(i)) for t, row in enumerate(np.asarray(idx)) for i, v in zip(row, np.asarray(val)[t]) if v > 0}
    theirs = {(int(t), int(lat)) for t, lat in zip(f.tok, f.lat) if lat >= 0}
    assert mine == theirs and len(mine) > 0
    assert int(over) == (int(f.overflow) if f.overflow is not None else 0)
