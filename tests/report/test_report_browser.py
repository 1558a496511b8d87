"""The report in a real browser: headless Debian chromium (Playwright) on the static site
(file://) and on engine.serve (http://127.0.0.1), with the same clicks and checks.

Skipped, with the install instruction, when chromium or playwright is missing.
Screenshots go to tests/artifacts/ (gitignored); look at them after a change to
the templates or the CSS.
"""

from __future__ import annotations

import json

import pytest

import engine.report.site as report
from engine.report.data import PAGE_SIZE, RunData, latent_href
from tests.helpers.chromium import ARTIFACTS, chromium_page, running_server
from tests.helpers.report_run import XSS_LABEL, write_synthetic_run
from tests.helpers.run_files import components_by_latent


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    synth = write_synthetic_run(run_dir, n_latents=200, scorers=(("detection", True), ("fuzzing", False), ("intruder", False)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "CHUNK_ROWS", 16)  # many chunk files: paging and search cross chunk boundaries
        index = report.build_report(run_dir, workers=1)
    run = RunData(run_dir)
    table = run.table([run.decode_row_fields(line, off) for off, line in run.scan()])
    comps = components_by_latent(run_dir)
    return synth, index, table, comps


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with chromium_page(tmp_path_factory.mktemp("profile")) as p:
        yield p


def rendered(page, q, sort, desc, n):
    want = json.dumps([q, sort, desc, n], separators=(",", ":"), ensure_ascii=False)
    page.wait_for_function("s => document.getElementById('latents').dataset.rendered === s", arg=want, timeout=15_000)
    return [int(x) for x in page.eval_on_selector_all("#latents tbody tr", "trs => trs.map(tr => tr.cells[0].textContent)")]


def check_index_and_latent(page, base, site, name):
    synth, index, table, comps = site
    page.errors.clear()
    page.goto(base + "/index.html")
    assert rendered(page, "", "latent", False, 0) == [r[0] for r in table.query(page=0).rows]
    assert page.inner_text("#status") == f"{len(synth.latents):,} latents"
    assert len(page.query_selector_all("#distributions svg.dist rect.bar")) > 10

    # search a label word, sort by a score (descending; unscored rows last), page forward
    page.fill("#search", "the word")
    got = rendered(page, "the word", "latent", False, 0)
    want = table.query("the word", "latent", False, 0)
    assert got == [r[0] for r in want.rows] and want.total > PAGE_SIZE
    page.click('th[data-sort="detection:balanced_accuracy"]')
    assert rendered(page, "the word", "detection:balanced_accuracy", True, 0) == \
        [r[0] for r in table.query("the word", "detection:balanced_accuracy", True, 0).rows]
    page.click("#next")
    want = table.query("the word", "detection:balanced_accuracy", True, 1)
    assert rendered(page, "the word", "detection:balanced_accuracy", True, 1) == [r[0] for r in want.rows]
    status = page.inner_text("#status")
    assert status == f"{want.total:,} matches" or (status.endswith("+ matches") and int(status.split("+")[0]) > 2 * PAGE_SIZE)

    page.fill("#search", synth.word)
    want = table.query(synth.word, "detection:balanced_accuracy", True, 0)
    assert rendered(page, synth.word, "detection:balanced_accuracy", True, 0) == [r[0] for r in want.rows]
    assert page.inner_text("#status") == f"{want.total:,} matches"
    labels = page.eval_on_selector_all("#latents tbody tr", "trs => trs.map(tr => tr.cells[2].textContent + tr.cells[1].textContent)")
    assert labels and all(synth.word in t.lower() for t in labels)
    page.screenshot(path=str(ARTIFACTS / f"report_{name}_index.png"), full_page=True)

    # open the first hit; examples, marked firing tokens and the histogram are in the DOM and visible
    first = want.rows[0][0]
    page.click("#latents tbody tr:first-child a")
    page.wait_for_url("**/" + latent_href(first))
    c = comps[first]
    assert page.inner_text("#label") == synth.labels[first]
    assert page.locator("#top-examples .ex").count() == len(c.top_examples)
    top_ids = {(e.sequence, e.position) for e in c.top_examples}
    n_random = sum(1 for e in c.random_examples if (e.sequence, e.position) not in top_ids)  # grouped by stratum
    assert page.locator("#random-examples .ex").count() == n_random
    assert page.locator("#random-examples .stratum").count() == min(5, n_random)
    assert page.locator("#top-examples .ex .f, #random-examples .ex .f").count() == len(c.top_examples) + n_random
    assert page.locator("svg.histogram rect.bar").count() == sum(1 for n in c.histogram if n)
    box = page.locator("svg.histogram").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 100
    assert page.locator("#top-examples .ex").first.is_visible()
    fire = page.locator("#top-examples .ex .f").first
    assert float(fire.get_attribute("title")) == pytest.approx(c.top_examples[0].activation, rel=1e-3)
    page.screenshot(path=str(ARTIFACTS / f"report_{name}_latent.png"), full_page=True)

    # a co-firing link leads to another latent page
    link = page.locator(".corr a").first
    href = link.get_attribute("href")
    key = link.inner_text()
    link.click()
    page.wait_for_url("**/" + href.removeprefix("../../"))
    assert page.inner_text("h1").startswith(key + " ")

    # dataset text that is markup stays text
    page.goto(base + "/" + latent_href(synth.xss_latent))
    assert page.inner_text("#label") == XSS_LABEL
    assert page.evaluate("window.__xss") is None
    assert page.locator("#top-examples .ex").count() == len(comps[synth.xss_latent].top_examples)
    assert page.errors == []


def check_id_and_search_stay_in_view(page, base, name):
    """Four score columns in a narrow window: the table scrolls sideways, the search box and the id column do not."""
    page.set_viewport_size({"width": 900, "height": 800})
    try:
        page.goto(base + "/index.html")
        rendered(page, "", "latent", False, 0)
        assert len(page.locator("#latents th[data-sort*=':']").all()) == 4
        sc = page.locator("#scroller")
        assert sc.evaluate("e => e.scrollWidth - e.clientWidth") > 100  # it does overflow
        sc.evaluate("e => { e.scrollLeft = e.scrollWidth; }")
        page.evaluate("() => window.scrollTo(0, document.querySelector('section.table').offsetTop + 200)")  # below the controls' start
        page.wait_for_function("() => document.getElementById('scroller').scrollLeft > 100")
        last = page.locator("#latents thead th").last.bounding_box()
        assert last["x"] + last["width"] <= 900  # scrolled to the last score column
        for sel in ("#search", "#latents tbody tr:nth-child(10) td:first-child"):
            box = page.locator(sel).bounding_box()
            assert 0 <= box["x"] and box["x"] + box["width"] <= 900, sel
            hit = page.evaluate("([x, y, s]) => document.elementFromPoint(x, y)?.closest(s) === document.querySelector(s)",
                                [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, sel])
            assert hit, f"{sel} is covered or scrolled away"
        page.screenshot(path=str(ARTIFACTS / f"report_{name}_index_scrolled.png"))
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_static_report_in_chromium(site, page):
    ARTIFACTS.mkdir(exist_ok=True)
    check_index_and_latent(page, site[1].parent.as_uri(), site, "static")
    check_id_and_search_stay_in_view(page, site[1].parent.as_uri(), "static")


def test_served_report_in_chromium(site, page):
    ARTIFACTS.mkdir(exist_ok=True)
    with running_server(site[0].dir) as base:
        assert base.startswith("http://127.0.0.1:")
        check_index_and_latent(page, base, site, "served")
        check_id_and_search_stay_in_view(page, base, "served")
