"""The JAX accumulator equals the torch HarvestState on the same activations (CPU JAX)."""

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="jax not installed: pip install -e '.[jax]' to run the JAX backend test")

from engine.harvest.firings import Firings  # noqa: E402
from engine.harvest.jax_backend import JaxHarvester  # noqa: E402
from engine.harvest.state import HarvestState, StateConfig  # noqa: E402


def _batches(seed=0, n_batches=3, B=3, S=12, L=9, V=13):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        tokens = torch.randint(0, V, (B, S), generator=g)
        acts = torch.rand(B, S, L, generator=g) * 4
        acts[torch.rand(B, S, L, generator=g) > 0.35] = 0
        valid = torch.rand(B, S, generator=g) > 0.1
        yield tokens, acts, valid


def test_jax_state_equals_torch_state():
    cfg = StateConfig(n_latents=9, vocab_size=13, seq_len=12, top_k=4, n_random=3, window=2, output_stats=False)
    ts, jh = HarvestState(cfg), JaxHarvester(cfg)
    first = 0
    for tokens, acts, valid in _batches():
        B, S, L = acts.shape
        flat = acts.reshape(B * S, L)
        tok, lat = torch.nonzero(flat > 0, as_tuple=True)
        seq = torch.arange(first, first + B)
        ts.update(tokens, Firings(tok, lat, flat[tok, lat]), seq_ids=seq, valid=valid)
        jh.update(acts.numpy(), tokens.numpy(), valid=valid.numpy(), seq_ids=seq.numpy(), encoded=True)
        first += B
    js = jh.to_torch()
    for name, t in ts.tensors().items():
        j = js.tensors()[name]
        if t.is_floating_point():
            torch.testing.assert_close(j, t, rtol=1e-6, atol=1e-6, msg=name)
        else:
            assert torch.equal(j, t), name


def test_jax_topk_encode_matches_torch_dictionary():
    from engine.harvest.dictionaries import Dictionary

    g = torch.Generator().manual_seed(1)
    W, b, bd = torch.randn(6, 20, generator=g), torch.randn(20, generator=g), torch.randn(6, generator=g)
    d = Dictionary("mem", "test:topk", None, W, b, bd, None, "topk", 4, None, 6, 20)
    x = torch.randn(15, 6, generator=g)
    cfg = StateConfig(n_latents=20, vocab_size=5, seq_len=5, output_stats=False)
    jh = JaxHarvester(cfg, W.numpy(), b.numpy(), b_dec=bd.numpy(), k=4)
    np.testing.assert_allclose(np.asarray(jh.encode(x.numpy())), d.encode_dense(x).numpy(), rtol=1e-5, atol=1e-5)
