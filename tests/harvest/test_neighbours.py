"""Decoder-cosine neighbours and logit-effect histograms (engine/harvest/neighbours.py) against brute force:
the full cosine matrix / logit table in float64 numpy, exact rational binning, and the file a real harvest writes.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from engine.core.rundir import RunDir
from engine.core.schemas import DIRECTIONS_FILE
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.model import load_model
from engine.harvest.neighbours import cosine_neighbours, logit_histograms
from engine.harvest.run import main as harvest_main


def brute_neighbours(W: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    W = W.astype(np.float64)
    norms = np.linalg.norm(W, axis=1)
    cos = (W @ W.T) / np.maximum(np.outer(norms, norms), 1e-300)
    np.fill_diagonal(cos, -np.inf)
    order = np.argsort(-cos, axis=1, kind="stable")[:, :n]
    return order, np.take_along_axis(cos, order, axis=1)


def test_cosine_neighbours_equal_the_full_matrix_across_chunks():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(37, 8, generator=g)
    W[5] = 0.0  # a dead decoder row: cosine 0 with everything
    want_i, want_c = brute_neighbours(W.numpy(), 6)
    for chunk_bytes in (4 * 37 * 3, 1 << 20):  # 3 rows per chunk (13 chunks, last one short), then one chunk
        idx, cos = cosine_neighbours(W, n=6, chunk_bytes=chunk_bytes)
        assert idx.dtype == torch.int64 and idx.shape == (37, 6)
        np.testing.assert_allclose(cos.numpy(), want_c, atol=2e-6)
        rows = [r for r in range(37) if r != 5]  # row 5's cosines all tie at 0
        assert (idx.numpy()[rows] == want_i[rows]).all()
        assert not (idx.numpy() == np.arange(37)[:, None]).any()  # never its own neighbour


def test_fewer_latents_than_neighbours_pads():
    idx, cos = cosine_neighbours(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]), n=4)
    assert idx.tolist() == [[1, 2, -1, -1], [0, 2, -1, -1], [0, 1, -1, -1]]
    np.testing.assert_allclose(cos[:, :2].numpy(), [[2**-0.5, 0.0], [2**-0.5, -(2**-0.5)], [0.0, -(2**-0.5)]], atol=1e-6)
    assert (cos[:, 2:] == 0).all()


def exact_bins(row: np.ndarray, bins: int) -> np.ndarray:
    """floor((v - lo) * bins / (hi - lo)) in exact rational arithmetic, the maximum in the last bin."""
    lo, hi = Fraction(float(row.min())), Fraction(float(row.max()))
    out = np.zeros(bins, dtype=np.int64)
    for v in row.tolist():
        b = 0 if hi == lo else int((Fraction(v) - lo) * bins / (hi - lo))
        out[min(b, bins - 1)] += 1
    return out


def test_logit_histograms_on_an_integer_grid_are_exact():
    g = torch.Generator().manual_seed(1)
    W_dec = torch.randint(-3, 4, (13, 6), generator=g).float()
    W_dec[4] = 0.0  # all logits equal: everything in bin 0
    gamma = torch.randint(1, 3, (6,), generator=g).float()
    W_U = torch.randint(-2, 3, (53, 6), generator=g).float()
    logits = (W_dec.numpy().astype(np.float64) * gamma.numpy()) @ W_U.numpy().T.astype(np.float64)  # exact integers
    for chunk_bytes in (4 * 53 * 2, 1 << 20):
        counts, ranges = logit_histograms(W_dec, gamma, W_U, bins=7, chunk_bytes=chunk_bytes)
        assert counts.dtype == torch.int32
        for r in range(13):
            assert counts[r].tolist() == exact_bins(logits[r], 7).tolist(), r
        assert ranges.numpy().tolist() == np.stack([logits.min(1), logits.max(1)], 1).tolist()
    assert counts[4].tolist() == [53, 0, 0, 0, 0, 0, 0]


def test_logit_histograms_match_numpy_on_random_weights():
    g = torch.Generator().manual_seed(2)
    W_dec, gamma, W_U = torch.randn(29, 16, generator=g), torch.rand(16, generator=g) + 0.5, torch.randn(301, 16, generator=g)
    counts, ranges = logit_histograms(W_dec, gamma, W_U, bins=20, chunk_bytes=4 * 301 * 4)
    logits = (W_dec.double().numpy() * gamma.double().numpy()) @ W_U.double().numpy().T
    np.testing.assert_allclose(ranges.numpy(), np.stack([logits.min(1), logits.max(1)], 1), rtol=1e-5, atol=1e-5)
    for r in range(29):
        want, edges = np.histogram(logits[r], bins=20, range=(logits[r].min(), logits[r].max()))
        near_edge = int((np.abs(logits[r][:, None] - edges[None, 1:-1]) < 1e-5 * (edges[-1] - edges[0])).sum())
        assert np.abs(counts[r].numpy() - want).sum() <= 2 * near_edge, r  # float32 vs float64 only at bin edges


@pytest.fixture(scope="module")
def harvested(tmp_path_factory):
    out = tmp_path_factory.mktemp("nbr") / "run"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--out", str(out), "--n-batches", "1",
                  "--batch-size", "2", "--context-length", "32", "--top-k", "2", "--n-random", "2", "--window", "2"])
    return out


def test_harvest_writes_the_directions_file(harvested):
    rc = RunDir(harvested).load_config()
    t = load_file(str(harvested / "harvest" / DIRECTIONS_FILE))
    W = load_dictionary(DEFAULT_SAE).W_dec.numpy()
    want_i, want_c = brute_neighbours(W, 10)
    assert t["decoder_neighbours"].shape == (rc.n_latents, 10)
    assert (t["decoder_neighbours"] == want_i).mean() > 0.999  # float32 vs float64 may swap a near tie
    np.testing.assert_allclose(t["decoder_cosine"], want_c, atol=1e-5)
    model, _, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    W_U = model.get_output_embeddings().weight.detach().double().numpy()
    gamma = model.model.norm.weight.detach().double().numpy()
    assert t["logit_hist"].shape == (rc.n_latents, 40) and (t["logit_hist"].sum(1) == W_U.shape[0]).all()
    for lat in (0, 17, 511, 1023):
        logits = (W[lat].astype(np.float64) * gamma) @ W_U.T
        want, edges = np.histogram(logits, bins=40, range=(logits.min(), logits.max()))
        near_edge = int((np.abs(logits[:, None] - edges[None, 1:-1]) < 1e-5 * (edges[-1] - edges[0])).sum())
        assert np.abs(t["logit_hist"][lat] - want).sum() <= 2 * near_edge
        np.testing.assert_allclose(t["logit_range"][lat], [logits.min(), logits.max()], rtol=1e-4, atol=1e-5)
