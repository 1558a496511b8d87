"""Dictionary loaders: our encode equals the reference library's on real files.

sae-lens SAEs are built with the `sae-lens` package itself (random weights,
saved with its own `save_model`), then loaded by us and compared with
`SAE.encode`. sparsify and Gemma Scope files are written in their documented
layouts and checked against the formulas.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.core.errors import UserError
from engine.harvest.dictionaries import load_dictionary
from tests.helpers.firings import fired

sae_lens = pytest.importorskip("sae_lens")


def _randomize(sae, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name != "threshold" else 0.1))
            if name == "threshold":
                p.abs_()


CASES = [
    ("StandardSAEConfig", {}),
    ("StandardSAEConfig", {"apply_b_dec_to_input": False}),
    ("TopKSAEConfig", {"k": 5}),
    ("TopKSAEConfig", {"k": 3, "rescale_acts_by_decoder_norm": True}),
    ("JumpReLUSAEConfig", {}),
    ("GatedSAEConfig", {}),
    ("TranscoderConfig", {"d_out": 12, "apply_b_dec_to_input": False}),
    ("JumpReLUTranscoderConfig", {"d_out": 12, "apply_b_dec_to_input": False}),
]


@pytest.mark.parametrize("cls,kw", CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CASES)])
def test_sae_lens_encode_matches(tmp_path, cls, kw):
    cfg = getattr(sae_lens, cls)(d_in=16, d_sae=40, **kw)
    sae = sae_lens.SAE.from_dict(cfg.to_dict())
    _randomize(sae)
    sae.save_model(str(tmp_path))
    ours = load_dictionary(str(tmp_path))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = sae.encode(x)
    got = ours.encode_dense(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    f = ours.encode(x)
    assert len(f.lat) == 64 * (f.per_token or 0) and f.per_token == min(40, ours.k or 256)  # fixed slots
    ftok, flat, fval = fired(f)
    assert int((want > 0).sum()) == len(fval)
    tok, lat = torch.nonzero(got > 0, as_tuple=True)  # packed firings (TopK: straight from its winners) = dense
    assert torch.equal(ftok, tok) and torch.equal(flat, lat)
    torch.testing.assert_close(fval, got[tok, lat], rtol=0, atol=0)


def test_sparsify_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    L, d, k = 30, 12, 4
    t = {"encoder.weight": torch.randn(L, d, generator=g), "encoder.bias": torch.randn(L, generator=g),
         "W_dec": torch.randn(L, d, generator=g), "b_dec": torch.randn(d, generator=g)}
    hp = tmp_path / "layers.3"
    hp.mkdir()
    save_file(t, str(hp / "sae.safetensors"))
    (hp / "cfg.json").write_text(json.dumps({"activation": "topk", "k": k, "num_latents": L, "d_in": d, "transcode": False}))
    ours = load_dictionary(str(tmp_path), hookpoint="layers.3")
    assert ours.hookpoint == "layers.3"
    x = torch.randn(20, d, generator=g)
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    val, idx = pre.topk(k, dim=1)
    want = torch.zeros_like(pre).scatter(1, idx, val)
    torch.testing.assert_close(ours.encode_dense(x), want)


def test_gemma_scope_npz(tmp_path):
    rng = np.random.default_rng(0)
    d, L = 10, 25
    arrs = {"W_enc": rng.normal(size=(d, L)).astype(np.float32), "b_enc": rng.normal(size=L).astype(np.float32),
            "W_dec": rng.normal(size=(L, d)).astype(np.float32), "b_dec": rng.normal(size=d).astype(np.float32),
            "threshold": np.abs(rng.normal(size=L)).astype(np.float32)}
    np.savez(tmp_path / "params.npz", **arrs)
    ours = load_dictionary(str(tmp_path / "params.npz"))
    x = torch.from_numpy(rng.normal(size=(7, d)).astype(np.float32))
    pre = x.numpy() @ arrs["W_enc"] + arrs["b_enc"]
    want = pre * (pre > arrs["threshold"])
    np.testing.assert_allclose(ours.encode_dense(x).numpy(), np.maximum(want, 0), rtol=1e-5, atol=1e-6)


def test_neurons():
    ours = load_dictionary("neurons:6")
    x = torch.tensor([[1.0, -1.0, 0.0, 2.0, -3.0, 0.5]])
    f = ours.encode(x)
    assert fired(f)[1].tolist() == [0, 3, 5]


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "unknown format"),
    (lambda p: (p.mkdir(), (p / "cfg.json").write_text("{"), (p / "sae_weights.safetensors").write_bytes(b"x")), "not valid JSON"),
    (lambda p: (p.mkdir(), (p / "cfg.json").write_text('{"architecture": "standard"}'), (p / "sae_weights.safetensors").write_bytes(b"garbage")), "corrupt"),
    (lambda p: (p.mkdir(), (p / "cfg.json").write_text('{"architecture": "weird"}'), save_file({"W_enc": torch.zeros(2, 2)}, str(p / "sae_weights.safetensors"))), "not supported"),
])
def test_bad_dictionary_gives_one_line_error(tmp_path, setup, match):
    p = tmp_path / "dict"
    setup(p)
    with pytest.raises(UserError, match=match) as e:
        load_dictionary(str(p))
    assert "\n" not in str(e.value) and "--" in str(e.value)


def _relu(W, cap):
    from engine.harvest.dictionaries.base import Dictionary

    d_in, L = W.shape
    return Dictionary("random", "test:relu", None, W, torch.zeros(L), None, None, "relu", 0, None, d_in, L,
                      firings_per_token=cap)


def _brute_force_cap(dense: torch.Tensor, P: int):
    """Loops: each token's P largest in its row; the rest, in (token, latent) order, into N * P // 4 spill
    slots; -> ({(tok, lat): val} of the rows, the same of the spill, how many did not fit)."""
    N, L = dense.shape
    rows, spill, left = {}, {}, 0
    for t in range(N):
        ranked = sorted((lat for lat in range(L) if dense[t, lat] > 0), key=lambda lat: -float(dense[t, lat]))
        for lat in ranked[:P]:
            rows[t, lat] = float(dense[t, lat])
    for t in range(N):
        for lat in range(L):
            if dense[t, lat] > 0 and (t, lat) not in rows:
                if len(spill) < N * P // 4:
                    spill[t, lat] = float(dense[t, lat])
                else:
                    left += 1
    return rows, spill, left


def _slots(f, lo, hi):
    return {(int(t), int(lat)): float(v) for t, lat, v in zip(f.tok[lo:hi], f.lat[lo:hi], f.val[lo:hi]) if lat >= 0}


@pytest.mark.parametrize("case", ["the spill is full", "two tokens fire far past the cap"])
def test_firings_past_the_per_token_cap_spill_and_only_what_the_spill_cannot_hold_is_dropped(case):
    g = torch.Generator().manual_seed(3)
    L, N, P = 40, 64, 3
    if case == "the spill is full":  # about half of 40 latents fire on every token: 17 a token past its 3
        d, x = _relu(torch.randn(16, L, generator=g), P), torch.randn(N, 16, generator=g)
    else:  # identity weights: 0-3 firings a token, but token 5 fires all 40 and token 40 fires 13: 37 + 10 spill
        # into 64 * 3 // 4 = 48 slots
        d = _relu(torch.eye(L), P)
        x = torch.where(torch.rand(N, L, generator=g) < 0.05, torch.rand(N, L, generator=g) + 0.1, -1.0)
        x = torch.where((x > 0).cumsum(1) > P, -1.0, x)  # at most P a token...
        x[5], x[40] = torch.rand(L, generator=g) + 0.1, torch.rand(L, generator=g) + 0.1  # ...but these two
        x[40, 13:] = -1.0
    dense = d.encode_dense(x)
    f = d.encode(x)
    rows, spill, left = _brute_force_cap(dense, P)
    assert f.per_token == P and f.rows and f.spilled == N * P // 4 and len(f.lat) == N * P + N * P // 4
    assert _slots(f, 0, N * P) == pytest.approx(rows) and len(rows) > 0
    assert _slots(f, N * P, len(f.lat)) == pytest.approx(spill) and len(spill) > 0
    assert int(f.overflow) == left
    if case == "the spill is full":
        assert left > 0
    else:  # every firing kept
        assert left == 0 and len(rows) + len(spill) == int((dense > 0).sum())


def test_random_dictionary_keeps_shapes_norms_and_biases():
    from engine.harvest.defaults import DEFAULT_SAE

    trained = load_dictionary(DEFAULT_SAE)
    rand = load_dictionary(DEFAULT_SAE).randomized(7)
    assert rand.kind == trained.kind + ":random" and rand.k == trained.k and rand.W_enc.shape == trained.W_enc.shape
    torch.testing.assert_close(rand.W_enc.norm(dim=0), trained.W_enc.norm(dim=0))  # each latent's encoder norm
    torch.testing.assert_close(rand.W_dec.norm(dim=1), trained.W_dec.norm(dim=1))  # and decoder norm
    assert torch.equal(rand.b_enc, trained.b_enc) and torch.equal(rand.b_dec_in, trained.b_dec_in)
    cos = torch.nn.functional.cosine_similarity(rand.W_enc, trained.W_enc, dim=0)
    assert cos.abs().max() < 0.5 and cos.abs().mean() < 0.1  # random directions in 128 dims: |cos| ~ 0.07
    assert torch.equal(load_dictionary(DEFAULT_SAE).randomized(7).W_enc, rand.W_enc)  # deterministic in the seed
    assert not torch.equal(load_dictionary(DEFAULT_SAE).randomized(8).W_enc, rand.W_enc)
    with pytest.raises(UserError, match="raw neurons"):
        load_dictionary("neurons:4").randomized(0)


def test_random_dictionary_harvest_is_recorded_and_uses_the_seeded_weights(tmp_path):
    import msgspec
    from safetensors.torch import load_file

    from engine.core.schemas import RunConfig
    from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
    from engine.harvest.model import load_model
    from engine.harvest.run import main as harvest_main
    from engine.harvest.sources import HookedModel

    out = tmp_path / "run"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--random", "--seed", "3", "--dataset", DEFAULT_DATASET, "--out", str(out),
                  "--batch-size", "2", "--n-batches", "1", "--context-length", "16", "--top-k", "2", "--n-random", "2",
                  "--window", "2", "--no-output-stats"])
    rc = msgspec.json.decode((out / "harvest" / "config.json").read_bytes(), type=RunConfig)
    assert rc.random_dictionary and rc.hookpoints[0].kind == "sae_lens:topk:random"
    tokens = torch.from_numpy(np.fromfile(out / "harvest" / "tokens.bin", dtype=np.int32).reshape(2, 16).astype(np.int64))
    model, _, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    hm = HookedModel(model, ["blocks.2.hook_resid_post"])
    x = hm.run(tokens, need_logits=False)[0]["blocks.2.hook_resid_post"]
    hm.close()
    dense = load_dictionary(DEFAULT_SAE).randomized(3).encode_dense(x.reshape(-1, 128)).reshape(2, 16, -1)[:, 1:]  # BOS out
    count = load_file(str(out / "harvest" / "stats.safetensors"))["count"]
    assert torch.equal(count.long(), (dense > 0).sum((0, 1)))
    trained = load_dictionary(DEFAULT_SAE).encode_dense(x.reshape(-1, 128)).reshape(2, 16, -1)[:, 1:]
    assert not torch.equal(count.long(), (trained > 0).sum((0, 1)))  # not the trained dictionary's firings
