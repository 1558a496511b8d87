"""The harvest gives the same results with the Triton kernels forced on (CPU interpreter) and off."""

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
from engine.harvest.harvester import Harvester  # noqa: E402
from engine.harvest.model import load_model  # noqa: E402
from engine.harvest.sources import HookedModel  # noqa: E402
from engine.harvest.state import StateConfig  # noqa: E402


def _harvest(mode, monkeypatch, model, tok, data, d):
    monkeypatch.setattr(dispatch, "MODE", mode)
    cfg = StateConfig(n_latents=d.n_latents, vocab_size=4096, seq_len=16, top_k=4, n_random=3, window=2, output_stats=False)
    h = Harvester([d], cfg, [d.hookpoint])
    hooked = HookedModel(model, [d.hookpoint])
    for ids in data:
        acts, _ = hooked.run(ids, need_logits=False)
        h.update(acts, ids, valid=ids != tok.bos_token_id)
    hooked.close()
    return h.state


def test_kernels_on_equals_off(monkeypatch):
    model, tok = load_model(DEFAULT_MODEL, "cpu", "float32")
    d = load_dictionary(DEFAULT_SAE)
    data = [ids for _, ids in batches(pack(iter_texts(DEFAULT_DATASET), tok, 16), 1, 2)]
    calls = []
    import kernels.encode_pack as ep

    real = ep.encode_pack_triton
    monkeypatch.setattr(ep, "encode_pack_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    on = _harvest("triton", monkeypatch, model, tok, data, d)
    assert calls, "the Triton encode was not used"
    off = _harvest("torch", monkeypatch, model, tok, data, d)
    for name, t in off.tensors().items():
        u = on.tensors()[name]
        if t.is_floating_point():
            torch.testing.assert_close(u, t, rtol=1e-4, atol=1e-5, equal_nan=True, msg=name)
        else:
            assert torch.equal(u, t), name
