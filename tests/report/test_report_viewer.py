"""The report of a real run (the embedded default, harvested small) in headless Debian chromium: decoder-cosine
neighbours, the logit-effect histogram and the stratum groups against brute force, no local path anywhere in
the static site, and try-your-own-text on engine.serve against the model and SAE run by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core.rundir import RunDir
from engine.harvest.defaults import ASSETS, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.model import load_model
from engine.harvest.sources import HookedModel
from engine.report.data import latent_href
from engine.report.site import build_report
from tests.helpers.chromium import ARTIFACTS, chromium_page, running_server
from tests.helpers.report_run import harvest_default
from tests.helpers.run_files import components_by_latent

TEXT = "def area(r):\n    return 3.14159 * r ** 2  # circle\n"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    run_dir = harvest_default(tmp_path_factory.mktemp("viewer") / "run")
    index = build_report(run_dir, workers=1)
    W = load_dictionary(DEFAULT_SAE).W_dec.double().numpy()
    return run_dir, index, components_by_latent(run_dir), W


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with chromium_page(tmp_path_factory.mktemp("profile")) as p:
        ARTIFACTS.mkdir(exist_ok=True)
        yield p


def brute_cosines(W: np.ndarray, lat: int) -> np.ndarray:
    cos = W @ W[lat] / (np.linalg.norm(W, axis=1) * np.linalg.norm(W[lat]))
    cos[lat] = -np.inf
    return cos


def clear_latent(comps, W) -> int:
    """A latent with several strata whose 10 nearest decoder rows are separated by clear gaps (no near ties)."""
    for lat, c in comps.items():
        top = np.sort(brute_cosines(W, lat))[::-1][:11]
        if len(c.random_examples) >= 8 and np.diff(top).max() < -1e-4:
            return lat
    raise AssertionError("no latent without near ties")


def brute_activations(text: str, lat: int | None = None):
    """The model and SAE run directly on BOS + the text's tokens: (token strings, activations [T, L])."""
    model, tok, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    sae = load_dictionary(DEFAULT_SAE)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        acts, _ = HookedModel(model, ["blocks.2.hook_resid_post"]).run(torch.tensor([[bos, *ids]]), need_logits=False)
        dense = sae.encode_dense(acts["blocks.2.hook_resid_post"][0])[1:]
    return [tok.decode([i]) for i in ids], dense.numpy()


def visible(tok: str) -> str:
    return tok.replace("\n", "\u21b5").replace("\r", "\u240d").replace("\t", "\u21e5") or "\u2205"


def test_static_latent_page_directions_strata_and_no_local_paths(real, page):
    run_dir, index, comps, W = real
    lat = clear_latent(comps, W)
    c = comps[lat]
    page.errors.clear()
    page.goto((index.parent / latent_href(lat)).as_uri())

    # similar latents by decoder cosine: the brute-force top 10, in order, linked where the latent has a page
    cos = brute_cosines(W, lat)
    want = np.argsort(-cos, kind="stable")[:10]
    rows = page.locator("#decoder-neighbours tbody tr")
    assert rows.count() == 10
    got = [int(t.split("/")[-1].split()[0]) for t in rows.locator("td:first-child").all_inner_texts()]
    assert got == want.tolist()
    shown = [float(x) for x in rows.locator("td.num").all_inner_texts()]
    np.testing.assert_allclose(shown, cos[want], atol=1e-3)
    links = page.locator("#decoder-neighbours a")
    assert links.count() == sum(1 for j in want if int(j) in comps) > 0
    href = links.first.get_attribute("href")

    # logit-effect histogram: one bar per non-empty bin, counts over the whole vocabulary
    model, _, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    W_U = model.get_output_embeddings().weight.detach().double().numpy()
    logits = (W[lat] * model.model.norm.weight.detach().double().numpy()) @ W_U.T
    want_hist, edges = np.histogram(logits, bins=40, range=(logits.min(), logits.max()))
    bars = page.locator("#logit-hist rect.bar")
    got_hist = np.zeros(40, dtype=np.int64)
    for t in bars.locator("title").all_text_contents():  # "1,234 in [lo, hi)"
        n, lo = int(t.split(" in ")[0].replace(",", "")), float(t.split("[")[1].split(",")[0])
        got_hist[int(np.argmin(np.abs(edges[:-1] - lo)))] += n
    assert got_hist.sum() == len(logits) == 4096
    near_edge = int((np.abs(logits[:, None] - edges[None, 1:-1]) < 1e-5 * (edges[-1] - edges[0])).sum())
    assert np.abs(got_hist - want_hist).sum() <= 2 * near_edge  # float32 vs float64 differ only at bin edges
    box = page.locator("#logit-hist svg").bounding_box()
    assert box and box["width"] > 300 and box["height"] > 100

    # random firings grouped into the scoring strata: equal-count groups by activation rank, strongest first
    top_ids = {(e.sequence, e.position) for e in c.top_examples}
    rest = sorted(e.activation for e in c.random_examples if (e.sequence, e.position) not in top_ids)
    groups = [list(g) for g in np.array_split(np.array(rest), min(5, len(rest)))][::-1]
    strata = page.locator("#random-examples .stratum")
    assert strata.count() == len(groups)
    for k, g in enumerate(groups):
        s = strata.nth(k)
        assert s.get_attribute("id") == f"stratum-q{len(groups) - k}"
        assert s.locator(".ex").count() == len(g)
        assert float(s.get_attribute("data-lo")) == pytest.approx(min(g)) and float(s.get_attribute("data-hi")) == pytest.approx(max(g))
        vals = [float(v) for v in s.locator(".ex .v").all_inner_texts()]
        assert vals == sorted(vals, reverse=True)
    assert "activation" in strata.first.locator("h3").inner_text()

    # no server: the live box says it needs engine.serve and shows no form
    assert page.locator("#live-off").is_visible() and "engine.serve" in page.inner_text("#live-off")
    assert not page.locator("#live-form").is_visible()
    page.screenshot(path=str(ARTIFACTS / "report_static_latent_real.png"), full_page=True)
    page.click(f'#decoder-neighbours a[href="{href}"]')
    page.wait_for_url("**/" + href.removeprefix("../../"))
    assert page.inner_text("h1").startswith(f"blocks.2.hook_resid_post/{int(href.split('/')[-1][:-5])} ")

    # no local path anywhere in the static site: not in any file, title or visible text
    local = {str(run_dir), str(run_dir.resolve()), str(ASSETS), str(Path.cwd()), str(Path.home()), DEFAULT_MODEL}
    for p in (index.parent).rglob("*"):
        if p.is_file():
            data = p.read_bytes().decode("utf-8", "replace")
            assert not [s for s in local if s in data], p
    for url in (index.as_uri(), (index.parent / latent_href(lat)).as_uri()):
        page.goto(url)
        shown_text = page.title() + page.inner_text("body")
        assert not [s for s in local if s in shown_text]
        assert "model" in page.inner_text("header.top") and f"{RunDir(run_dir).load_config().n_tokens:,} tokens" in page.inner_text("header.top")
    assert page.errors == []


def test_try_your_own_text_on_engine_serve(real, page):
    run_dir, _, comps, _ = real
    tokens, acts = brute_activations(TEXT)
    lat = max(comps, key=lambda j: acts[:, j].max())  # a harvested latent that fires on the text
    page.errors.clear()
    with running_server(run_dir, live=True) as base:
        page.goto(base + "/" + latent_href(lat))
        page.wait_for_selector("#live[data-ready]")
        assert not page.locator("#live-off").is_visible()
        page.fill("#live-text", TEXT)
        page.click("#live-run")
        page.wait_for_selector('#live[data-done="1"]', timeout=120_000)
        spans = page.locator("#live-tokens .live-line > span")
        assert spans.all_inner_texts() == [visible(t) for t in tokens]
        np.testing.assert_allclose([float(t) for t in spans.evaluate_all("ss => ss.map(s => s.title)")], acts[:, lat],
                                   rtol=1e-3, atol=1e-4)
        assert page.locator("#live-tokens span[class^=a]").count() == int((acts[:, lat] > 0).sum()) > 0
        page.screenshot(path=str(ARTIFACTS / "report_served_latent_live.png"), full_page=True)

        page.goto(base + "/index.html")
        page.wait_for_selector("#live[data-ready]")
        page.fill("#live-text", TEXT)
        page.click("#live-run")
        page.wait_for_selector('#live[data-done="1"]', timeout=120_000)
        peak = acts.max(axis=0)
        want = np.argsort(-peak, kind="stable")[:20]
        got = [int(x) for x in page.locator("#live-top tbody tr td:first-child").all_inner_texts()]
        assert len(got) == 20 and got[:10] == want[:10].tolist()
        shown = [float(x) for x in page.locator("#live-top tbody tr td:nth-child(4)").all_inner_texts()]
        np.testing.assert_allclose(shown, peak[got], rtol=1e-3)
        page.screenshot(path=str(ARTIFACTS / "report_served_index_live.png"), full_page=True)
        page.click("#live-top tbody tr:first-child a")
        page.wait_for_url("**/" + latent_href(got[0]))
    assert page.errors == []
