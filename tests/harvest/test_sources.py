"""Hookpoint resolution and capture on real HF architectures (tiny random weights)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from engine.core.errors import UserError
from engine.harvest.sources import HookedModel, resolve


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=64)).eval()


def test_tl_names_match_hidden_states(llama):
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        hs = llama(input_ids=ids, output_hidden_states=True).hidden_states
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.2.hook_mlp_out", "blocks.0.hook_attn_out"]
    hm = HookedModel(llama, names)
    acts, logits = hm.run(ids, need_logits=True)
    hm.close()
    torch.testing.assert_close(acts["blocks.0.hook_resid_pre"], hs[0])
    torch.testing.assert_close(acts["blocks.1.hook_resid_post"], hs[2])
    torch.testing.assert_close(acts["blocks.1.hook_resid_pre"], hs[1])
    # resid_post(1) = resid_pre(1) + attn_out(1) + mlp_out(1): check mlp/attn hooks are the block's writes.
    assert acts["blocks.2.hook_mlp_out"].shape == (2, 9, 32)
    assert logits.shape == (2, 9, 64)


def test_hf_paths_relative_and_full(llama):
    assert resolve(llama, "layers.1").module == "model.layers.1"
    assert resolve(llama, "model.layers.1.mlp").module == "model.layers.1.mlp"
    site = resolve(llama, "layers.1.mlp@in")
    assert (site.module, site.capture) == ("model.layers.1.mlp", "input")
    assert resolve(llama, "blocks.2.ln2.hook_normalized").capture == "input"


def test_attn_plus_mlp_reconstructs_residual(llama):
    ids = torch.randint(0, 64, (1, 7))
    hm = HookedModel(llama, ["blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"])
    a, _ = hm.run(ids, need_logits=False)
    hm.close()
    torch.testing.assert_close(a["blocks.1.hook_resid_pre"] + a["blocks.1.hook_attn_out"] + a["blocks.1.hook_mlp_out"], a["blocks.1.hook_resid_post"], rtol=1e-5, atol=1e-5)


def test_gemma2_sublayer_writes_are_the_post_norms_and_rebuild_the_residual():
    """Gemma 2 norms each sublayer's output before adding it: the TL names must capture what is added."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=16)
    model = Gemma2ForCausalLM(cfg).eval()
    for name, p in model.named_parameters():  # random norm weights: the pre- and post-norm outputs differ
        if "norm" in name:
            p.data = torch.randn_like(p) * 0.5
    assert resolve(model, "blocks.1.hook_resid_mid").module == "model.layers.1.pre_feedforward_layernorm"
    names = [f"blocks.1.hook_{h}" for h in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")]
    hm = HookedModel(model, names)
    a, _ = hm.run(torch.randint(0, 64, (1, 7)), need_logits=False)
    hm.close()
    a = {n.split("hook_")[1]: v for n, v in a.items()}
    torch.testing.assert_close(a["resid_pre"] + a["attn_out"], a["resid_mid"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a["resid_mid"] + a["mlp_out"], a["resid_post"], rtol=1e-5, atol=1e-5)


def test_early_stop_skips_later_layers(llama):
    ran = []
    h = llama.model.layers[2].register_forward_hook(lambda *a: ran.append(2))
    hm = HookedModel(llama, ["blocks.0.hook_resid_post"])
    acts, logits = hm.run(torch.randint(0, 64, (1, 5)), need_logits=False)
    hm.close()
    h.remove()
    assert logits is None and ran == [] and acts["blocks.0.hook_resid_post"].shape == (1, 5, 32)


def test_gpt2_tuple_outputs(gpt2):
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        hs = gpt2(input_ids=ids, output_hidden_states=True).hidden_states
    hm = HookedModel(gpt2, ["blocks.1.hook_resid_post", "h.0"])
    acts, _ = hm.run(ids, need_logits=False)
    hm.close()
    torch.testing.assert_close(acts["blocks.1.hook_resid_post"], hs[2])
    torch.testing.assert_close(acts["h.0"], hs[1])


@pytest.mark.parametrize("name,match", [("blocks.9.hook_resid_post", "has 3 layers"), ("layers.x.mlp", "unknown hookpoint"), ("blocks.1.hook_banana", "unknown hookpoint")])
def test_unknown_hookpoint(llama, name, match):
    with pytest.raises(UserError, match=match):
        resolve(llama, name)
