"""The JAX state equals the torch HarvestState on the same firings: every tensor, dense and sketch tables,
with and without output-token statistics (CPU JAX); and, on a ReLU dictionary whose tokens fire past the
per-token cap, the JAX encode + update equals the torch `Dictionary.encode` + update (rows and spill)."""

import numpy as np
import pytest
import torch

pytest.importorskip("jax", reason="jax not installed: pip install -e '.[jax]' to run the JAX backend tests")

import jax.numpy as jnp

from engine.harvest.dictionaries import Dictionary
from engine.harvest.firings import from_rows
from engine.harvest.jax.convert import from_torch, merged, to_torch
from engine.harvest.jax.encode import dict_params, dict_static, encode_rows
from engine.harvest.jax.state import init_state, next_token_stats, update_jit
from engine.harvest.state import HarvestState, StateConfig

B, S, L, V, P, T = 3, 10, 9, 13, 4, 3


def _batches(seed=0, n_batches=3):
    """Per-token firing rows with ties, repeats and padding, plus next-token logits."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        tokens = torch.randint(0, V, (B, S), generator=g)
        idx = torch.stack([torch.randperm(L, generator=g)[:P] for _ in range(B * S)])  # distinct per token
        val = (torch.rand(B * S, P, generator=g) * 4).round(decimals=1)  # repeated values: order ties
        val[torch.rand(B * S, P, generator=g) > 0.6] = 0  # padding slots
        valid = torch.rand(B, S, generator=g) > 0.1
        logits = torch.randn(B * S, V, generator=g) * 2
        yield tokens, idx, val, valid, logits


def assert_states_equal(j: HarvestState, t: HarvestState):
    jt, tt = j.tensors(), t.tensors()
    assert sorted(jt) == sorted(tt)
    for name, ref in tt.items():
        got = jt[name]
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        if ref.is_floating_point():  # float64 sums of the same terms in another order: ~1e-16 relative
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
        else:
            bad = (got != ref).nonzero()
            assert len(bad) == 0, f"{name}: {len(bad)} entries differ, first at {bad[:3].tolist()}: {got[tuple(bad[0])]} vs {ref[tuple(bad[0])]}"


def _relu(per_token: int, d=6) -> Dictionary:
    """A ReLU dictionary on L latents, weights and inputs on a 2^-10 grid: x @ W + b is exact in float32
    on either backend, so the JAX and torch encodes fire bit-identical values (and rank them alike)."""
    g = torch.Generator().manual_seed(5)
    W = torch.randint(-1024, 1025, (d, L), generator=g).float() / 1024
    b = torch.randint(0, 2049, (L,), generator=g).float() / 1024  # biased up: most latents fire
    dic = Dictionary("mem", "test:relu", None, W, b, None, None, "relu", 0, None, d, L)
    dic.firings_per_token = per_token
    return dic


def _encode_both(dic: Dictionary, seed: int):
    """Torch Dictionary.encode firings and the JAX encode's (idx, val, overflow, spill) of one batch's inputs."""
    x = torch.randint(-8, 9, (B * S, dic.d_in), generator=torch.Generator().manual_seed(seed)).float()
    return dic.encode(x), encode_rows(dict_params(dic), jnp.asarray(x.numpy()), dict_static(dic))


def _harvest_both(cfg: StateConfig, seed=0, first_seq=0, dic: Dictionary | None = None):
    """Both states over three batches: the test rows of _batches, or (dic) each backend's encode of the inputs."""
    ts, js = HarvestState(cfg), init_state(cfg)
    for b, (tokens, idx, val, valid, logits) in enumerate(_batches(seed)):
        seq = torch.arange(first_seq + b * B, first_seq + (b + 1) * B)
        next_top = next_mass = None
        if cfg.output_stats:
            probs = torch.softmax(logits, dim=-1)  # engine.harvest.harvester's output-stat inputs
            top_p, top_id = probs.topk(T, dim=-1)
            next_mass = torch.zeros(V, dtype=torch.float64).index_add_(
                0, top_id.reshape(-1), (top_p * valid.reshape(-1, 1)).reshape(-1).double())
            next_top = (top_id, top_p)
        f, enc = from_rows(idx, val), (jnp.asarray(idx.numpy()), jnp.asarray(val.numpy()), jnp.zeros((), jnp.int64), None)
        if dic is not None:
            f, enc = _encode_both(dic, 100 * seed + b)
        ts.update(tokens, f, seq_ids=seq, valid=valid, next_top=next_top, next_mass=next_mass)
        jtop = jmass = None
        if cfg.output_stats:  # the torch probabilities: the state must fold them in identically
            jtop = (jnp.asarray(top_id.numpy()), jnp.asarray(top_p.numpy()))
            jmass = jnp.asarray(next_mass.numpy())
            (j_id, j_p), j_mass = next_token_stats(jnp.asarray(logits.numpy()), jnp.asarray(valid.numpy()), T, V)
            assert np.array_equal(np.asarray(j_id), top_id.numpy())  # JAX's softmax is within float32 rounding:
            np.testing.assert_allclose(np.asarray(j_p), top_p.numpy(), rtol=1e-6)   # a few ulps (2^-23 = 1.2e-7)
            np.testing.assert_allclose(np.asarray(j_mass), next_mass.numpy(), rtol=1e-6)
        j_idx, j_val, j_over, j_spill = enc
        js = update_jit(js, jnp.asarray(tokens.numpy()), j_idx, j_val, j_over, jnp.asarray(seq.numpy()),
                        jnp.asarray(valid.numpy()), jtop, jmass, cfg, spill=j_spill)
    return to_torch(js, cfg), ts


CONFIGS = {
    "dense": {"output_stats": False},
    "dense+out": {"output_stats": True},
    "sketch": {"output_stats": False, "pair_budget_bytes": 0, "token_slots": 3, "cooc_slots": 3},
    "sketch+out": {"output_stats": True, "pair_budget_bytes": 0, "token_slots": 3, "cooc_slots": 3},
    # the CLI's one-top-per-chunk rule, fixed-chunk windows, a co-occurrence position sample, a sequence offset
    "sketch+rules": {"output_stats": False, "pair_budget_bytes": 0, "token_slots": 3, "cooc_slots": 3, "top_chunk": 5,
                     "center_examples": False, "cooc_rate": 0.5, "seq_offset": 7},
}


@pytest.mark.parametrize("mode", list(CONFIGS))
def test_jax_state_equals_torch_state(mode):
    cfg = StateConfig(n_latents=L, vocab_size=V, seq_len=S, top_k=4, n_random=3, window=2, output_top=T, **CONFIGS[mode])
    js, ts = _harvest_both(cfg)
    assert js.in_tok.mode == ("sketch" if "sketch" in mode else "dense") == js.cooc.mode
    assert int(ts.count.sum()) > 0 and (ts.top_loc[:, -1] >= 0).any()  # the buffers filled: the merge is exercised
    if "sketch" in mode:
        assert (ts.in_tok.err > 0).any() and (ts.cooc.err > 0).any()  # rows overflowed their slots
    assert_states_equal(js, ts)


@pytest.mark.parametrize("per_token", [3, 6])  # 3: the spill overflows; 6: it holds everything beyond the rows
@pytest.mark.parametrize("mode", ["dense+out", "sketch+rules"])
def test_jax_encode_and_state_equal_torch_with_spill(mode, per_token):
    """A ReLU dictionary that fires past its per-token cap: the spilled firings feed every per-latent statistic
    (counts, histogram, top-K under the one-per-chunk rule, reservoir, token tables) alike on both backends,
    and co-occurrence takes the rows only."""
    cfg = StateConfig(n_latents=L, vocab_size=V, seq_len=S, top_k=4, n_random=3, window=2, output_top=T, **CONFIGS[mode])
    dic = _relu(per_token)
    f, (_, _, over, spill) = _encode_both(dic, 0)
    used = f.lat[-f.spilled:] >= 0
    assert f.spilled == len(spill[0]) == B * S * per_token // 4 and used.any()  # the spill matters
    assert (int(f.overflow) > 0) == (per_token == 3) == bool(used.all()) and int(over) == int(f.overflow)
    js, ts = _harvest_both(cfg, dic=dic)
    assert int(ts.overflow) == int(js.overflow) and int(ts.count.sum()) > 0
    assert_states_equal(js, ts)


def test_round_trip_and_merge_of_jax_states():
    """from_torch -> to_torch is the identity, and merged() folds per-device states as HarvestState.merge."""
    cfg = StateConfig(n_latents=L, vocab_size=V, seq_len=S, top_k=4, n_random=3, window=2, output_top=T, output_stats=True)
    a_j, a_t = _harvest_both(cfg, seed=1)
    b_j, b_t = _harvest_both(cfg, seed=2, first_seq=1000)  # other data: other sequence ids
    assert_states_equal(to_torch(from_torch(a_t), cfg), a_t)
    a_t.merge(b_t)
    assert_states_equal(merged([from_torch(a_j), from_torch(b_j)], cfg), a_t)
    assert np.asarray(init_state(cfg)["top_loc"]).min() == -1
