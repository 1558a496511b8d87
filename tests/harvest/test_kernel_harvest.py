"""The harvest gives the same results with every Triton kernel of the step forced on (CPU interpreter) and off:
integers exactly, floats within fp32 tolerance, for the embedded TopK SAE and a ReLU dictionary with many firings
per token (output-token statistics on)."""

import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (set by `make test`) to run Triton on the CPU", allow_module_level=True)

import kernels.dispatch as dispatch  # noqa: E402
from engine.harvest.data import batches, iter_texts, pack  # noqa: E402
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE  # noqa: E402
from engine.harvest.dictionaries import load_dictionary  # noqa: E402
from engine.harvest.dictionaries.base import Dictionary  # noqa: E402
from engine.harvest.harvester import Harvester  # noqa: E402
from engine.harvest.model import load_model  # noqa: E402
from engine.harvest.sources import HookedModel  # noqa: E402
from engine.harvest.state import StateConfig  # noqa: E402

LAUNCHERS = [("kernels.encode_pack", "encode_pack_triton"), ("kernels.topk_merge", "topk_merge_triton"),
             ("kernels.window_gather", "gather_windows_triton"), ("kernels.token_stats", "pair_count_update_triton"),
             ("kernels.cooccurrence", "cooc_dense_update_triton")]
"Every op of the harvest step that has a Triton kernel: each must run when the kernels are forced on."


def _harvest(mode, monkeypatch, model, tok, data, d, output_stats):
    monkeypatch.setattr(dispatch, "MODE", mode)
    cfg = StateConfig(n_latents=d.n_latents, vocab_size=4096, seq_len=16, top_k=4, n_random=3, window=2,
                      output_stats=output_stats)
    h = Harvester([d], cfg, [d.hookpoint])
    hooked = HookedModel(model, [d.hookpoint])
    for ids in data:
        acts, logits = hooked.run(ids, need_logits=output_stats)
        h.update(acts, ids, valid=ids != tok.bos_token_id, logits=logits)
    hooked.close()
    return h.state


def _relu_dictionary(like):
    """A ReLU dictionary on the same hookpoint whose latents fire often (48 firings per token on these batches)."""
    g = torch.Generator().manual_seed(0)
    d_in, L = like.d_in, 96
    W = torch.randn(d_in, L, generator=g) / d_in**0.5
    return Dictionary("relu-random", "test:relu", like.hookpoint, W, torch.full((L,), 0.05), None, None, "relu", 0,
                      None, d_in, L)


@pytest.mark.parametrize("which", ["embedded TopK SAE", "ReLU, many firings per token", "ReLU, past the cap: spill"])
def test_kernels_on_equals_off(monkeypatch, which):
    import importlib

    model, tok, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    d = load_dictionary(DEFAULT_SAE)
    relu = which.startswith("ReLU")
    if relu:
        d = _relu_dictionary(d)
    spill = which.endswith("spill")
    if spill:  # 40 of ~48 firings per token in the rows; the rest spill (N * 40 / 4 slots) and are all kept
        d.firings_per_token = 40
    data = [ids for _, ids in batches(pack(iter_texts(DEFAULT_DATASET), tok, 16), 1, 2)]
    calls: set[str] = set()

    def counted(name, real):
        def launcher(*args, **kwargs):
            calls.add(name)
            return real(*args, **kwargs)
        return launcher

    for mod, name in LAUNCHERS:
        m = importlib.import_module(mod)
        monkeypatch.setattr(m, name, counted(name, getattr(m, name)))
    on = _harvest("triton", monkeypatch, model, tok, data, d, output_stats=relu)
    # co-occurrence: the cost model takes F^T F for 96 dense-firing latents, the same-token pairs for TopK
    want = {name for _, name in LAUNCHERS} - (set() if relu else {"cooc_dense_update_triton"})
    assert calls == want, f"Triton launchers used: {sorted(calls)}"
    off = _harvest("torch", monkeypatch, model, tok, data, d, output_stats=relu)
    if relu:
        assert int(off.count.sum()) > 20 * int(off.n_tokens)  # many firings per token, as meant
    assert int(on.overflow) == int(off.overflow) == 0
    if spill:  # more than the rows hold: the spill carried the rest into every per-latent statistic
        assert int(off.count.sum()) > 40 * int(off.n_tokens)
    for name, t in off.tensors().items():
        u = on.tensors()[name]
        if t.is_floating_point():
            torch.testing.assert_close(u, t, rtol=1e-4, atol=1e-5, equal_nan=True, msg=name)
        else:
            assert torch.equal(u, t), name
