"""engine.report's static site on a synthetic run (no browser): example markup, the index data, latent pages,
escaping of dataset text, the parallel build, bad input.

The synthetic run (tests/helpers/report_run.py) computes every statistic by
brute force; these tests check what the pages and the index data say against it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import msgspec
import pytest

from engine.core.errors import UserError, run_cli
from engine.core.schemas import ActivationExample
from engine.report.data import RunData, latent_href
from engine.report.site import build_report, examples_html, num
from engine.report.site import main as report_main
from tests.helpers.report_pages import Dom, meta_of
from tests.helpers.report_run import XSS_LABEL, XSS_REASONING, write_synthetic_run
from tests.helpers.run_files import components_by_latent as components


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("report") / "run", n_latents=200)


@pytest.fixture(scope="module")
def built(synth):
    index = build_report(synth.dir, workers=1)
    return synth, index


def visible(tok: str) -> str:
    """How a token reads on a page: line breaks and tabs as symbols, an empty token as the empty set."""
    return tok.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


# --------------------------------------------------------------------------- example markup


def test_examples_html_marks_the_firing_token_and_escapes():
    ex = ActivationExample(sequence=3, position=9, activation=2.0, token_ids=[1, 2, 3, 4],
                           tokens=["<script>", " a\n", "&b", ""], activations=[0.0, 2.0, 0.5, 0.0], firing_index=1,
                           source="top")
    markup = str(examples_html([ex], 4.0))
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    (row,) = Dom(markup).root.find_all("div", "ex")
    (left,) = row.find_all("span", "l")
    (right,) = row.find_all("span", "r")
    toks = left.children[0].children + right.children
    assert [n.all_text() for n in toks] == ["<script>", " a\u21b5", "&b", "\u2205"]
    assert toks[1].classes() == ["f", "a5"] and toks[1].attrs["title"] == "2"  # 2/4 of the max: 4.5 -> level 5
    assert toks[2].classes() == ["a2"] and toks[2].attrs["title"] == "0.5"  # 0.5/4 * 9 = 1.125 -> level 2
    assert toks[0].classes() == [] and "title" not in toks[0].attrs
    assert row.find_all(cls="v")[0].all_text() == "2" and row.find_all(cls="loc")[0].all_text() == "3:9"
    # a firing token that is not positive still gets the marker; an out-of-range index leaves all tokens left
    zero = msgspec.structs.replace(ex, activations=[0.0] * 4)
    (f,) = Dom(str(examples_html([zero], 4.0))).root.find_all(cls="f")
    assert f.all_text() == " a\u21b5" and f.attrs["title"] == "0"
    over = msgspec.structs.replace(ex, activations=[0.0, 2.0, 9.0, 0.0])  # above max_act: shades against 9
    (hot,) = Dom(str(examples_html([over], 4.0))).root.find_all(cls="a9")
    assert hot.all_text() == "&b" and Dom(str(examples_html([over], 4.0))).root.find_all(cls="f")[0].classes() == ["f", "a3"]
    out = msgspec.structs.replace(ex, firing_index=9)
    row = Dom(str(examples_html([out], 4.0))).root.find_all("div", "ex")[0]
    assert len(row.find_all("span", "l")[0].children[0].children) == 4 and not row.find_all(cls="f")


# --------------------------------------------------------------------------- the static site


def chunk_rows(report: Path, k: int) -> list[list]:
    rows = []
    files = sorted((report / "data" / f"s{k}").glob("*.js"), key=lambda p: int(p.stem))
    for c, f in enumerate(files):
        m = re.fullmatch(rb"__latentRows\((\d+),(\d+),(.*)\);\n", f.read_bytes(), re.S)
        assert m and int(m[1]) == k and int(m[2]) == c
        rows += json.loads(m[3])
    return rows


def test_static_index_data_is_every_sort_order(built):
    synth, index = built
    run = RunData(synth.dir)
    comps = components(synth.dir)
    table = run.table([run.decode_row_fields(line, off) for off, line in run.scan()])
    meta = meta_of(index.read_text())
    assert meta["mode"] == "static" and meta["n"] == len(synth.latents) == len(comps)
    assert [s["key"] for s in meta["sorts"]] == ["latent", "density", "max_act", "detection:balanced_accuracy",
                                                  "detection:auc", "fuzzing:balanced_accuracy"]
    for k, s in enumerate(meta["sorts"]):
        rows = chunk_rows(index.parent, k)
        assert rows == [table.rows[i] for i in table.ordered(k, False)]
        assert s["n_present"] == sum(1 for r in rows if (r[9][k - 3] if k >= 3 else 0) is not None)
    by_lat = {r[0]: r for r in chunk_rows(index.parent, 0)}
    assert sorted(by_lat) == synth.latents
    for lat, c in comps.items():
        r = by_lat[lat]
        assert r[1] == c.component_key and r[6] == c.firing_density and r[7] == c.firing_count
        assert r[2] == synth.labels.get(lat, "") and r[3] == synth.search_labels.get(lat, "")


def test_latent_pages_show_the_harvested_data(built):
    synth, index = built
    comps = components(synth.dir)
    edges = msgspec.json.decode((synth.dir / "harvest" / "config.json").read_bytes())["histogram_edges"]
    n_strata = 0
    for lat in synth.latents[:: max(1, len(synth.latents) // 25)] + [synth.xss_latent]:
        c = comps[lat]
        dom = Dom((index.parent / latent_href(lat)).read_text())
        assert dom.root.find_all(id="label")[0].all_text() == synth.labels.get(lat, "not explained yet")
        assert dom.root.find_all(id="firing-count")[0].all_text() == f"{c.firing_count:,}"
        top_ids = {(e.sequence, e.position) for e in c.top_examples}
        grouped = sorted((e for e in c.random_examples if (e.sequence, e.position) not in top_ids), key=lambda e: -e.activation)
        for box, exs in (("top-examples", c.top_examples), ("random-examples", grouped)):  # strata, strongest first
            rows = dom.root.find_all(id=box)[0].find_all("div", "ex")
            assert len(rows) == len(exs)
            for row, ex in zip(rows, exs):
                (fire,) = row.find_all(cls="f")
                assert float(fire.attrs["title"]) == pytest.approx(ex.activations[ex.firing_index], rel=1e-3)
                shaded = [n for n in row.iter() if any(re.fullmatch(r"a\d", k) for k in n.classes())]
                assert len(shaded) == sum(a > 0 for a in ex.activations)
                text = row.find_all(cls="l")[0].all_text() + row.find_all(cls="r")[0].all_text()
                assert text == "".join(map(visible, ex.tokens))
        bars = dom.root.find_all("svg", "histogram")[0].find_all("rect", "bar")
        nz = [i for i, n in enumerate(c.histogram) if n]
        assert len(bars) == len(nz)
        top = max(c.histogram)
        for b, i in zip(bars, nz):
            assert float(b.attrs["height"]) == pytest.approx(102 * c.histogram[i] / top, abs=0.06)
            assert b.all_text().startswith(f"{c.histogram[i]:,} in [{edges[i]:.3g}, ")
        # co-firing links point at pages that exist, with the right keys
        links = [a for a in dom.root.find_all("a") if a.attrs["href"].startswith("../../latents/")]
        assert len(links) == sum(len(getattr(c.correlations, n)) for n in ("precision", "recall", "pmi", "jaccard"))
        for a in links:
            assert (index.parent / latent_href(lat)).parent.joinpath(a.attrs["href"]).resolve().is_file()
        tables = dom.root.find_all("table", "scored")
        pmi = next(t for t in tables if t.find_all("caption")[0].all_text() == "PMI")
        shown = [tr.find_all("td")[0].all_text() for tr in pmi.find_all("tbody")[0].find_all("tr")]
        assert shown == ([visible(s.key) for s in c.input_token_stats.top_pmi] or ["none"])
        scored = [r for name in synth.scorers for r in _score_lines(synth.dir, name) if r["latent"] == lat]
        strata = [s.all_text() for s in dom.root.find_all(cls="stratum-recall")]
        assert strata == [f"{k} {num(v)} (n={r['per_stratum_n'][k]})" for r in scored
                          for k, v in r["per_quantile_recall"].items()]  # per stratum: recall and examples judged
        n_strata += len(strata)
    assert n_strata > 0


def test_dataset_text_is_escaped_everywhere(built):
    synth, index = built
    for page in [index, *index.parent.glob("latents/*/*.html")]:
        text = page.read_text()
        assert "<script>alert" not in text and "<script>window" not in text and "<img" not in text, page
    xss = (index.parent / latent_href(synth.xss_latent)).read_text()
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in xss and "&lt;img src=x" in xss
    dom = Dom(xss)
    assert dom.root.find_all(id="label")[0].all_text() == XSS_LABEL
    assert XSS_REASONING in dom.root.all_text()
    assert all(s.attrs.get("id") != "meta" or "<" not in s.all_text() for s in Dom(index.read_text()).root.find_all("script"))


def test_index_page_summary(built):
    synth, index = built
    text = " ".join(Dom(index.read_text()).root.all_text().split())
    n_llm = sum(1 for src in synth.sources.values() if src == "llm")
    assert 0 < n_llm < len(synth.labels)
    assert f"{len(synth.latents):,} latents" in text
    assert f"{len(synth.labels):,} explained ({n_llm:,} by an LLM), 2 scorers, {len(synth.dead)} never fired" in text
    assert len(Dom(index.read_text()).root.find_all("svg", "dist")) == 4  # density + 3 score columns


def test_parallel_build_writes_the_same_site(built, tmp_path, monkeypatch):
    synth, index = built
    import engine.report.site as report

    monkeypatch.setattr(report, "SPLIT_BYTES", 200_000)  # several byte ranges, split mid-line
    other = build_report(synth.dir, tmp_path / "site", workers=2)
    assert other.read_text() == index.read_text()
    a = sorted(p.relative_to(index.parent) for p in index.parent.rglob("*") if p.is_file())
    b = sorted(p.relative_to(other.parent) for p in other.parent.rglob("*") if p.is_file())
    assert a == b
    for rel in a:
        assert (index.parent / rel).read_bytes() == (other.parent / rel).read_bytes(), rel
    bad = tmp_path / "bad"
    shutil.copytree(synth.dir, bad, ignore=shutil.ignore_patterns("report"))
    lines = (bad / "harvest" / "components.jsonl").read_bytes().splitlines(keepends=True)
    lines[len(lines) // 2] = b'{"latent": "x"}\n'
    (bad / "harvest" / "components.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(UserError, match=r"components\.jsonl \(line at byte \d+\): not a ComponentData"):
        build_report(bad, workers=2)


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_error(tmp_path, synth, capsys):
    with pytest.raises(UserError, match=r"config\.json not found .* run `python -m engine\.harvest"):
        build_report(tmp_path / "nowhere")
    with pytest.raises(SystemExit) as e:
        run_cli(report_main, [str(tmp_path / "nowhere")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    bad = tmp_path / "bad"
    shutil.copytree(synth.dir / "harvest", bad / "harvest")
    with open(bad / "harvest" / "components.jsonl", "ab") as f:
        f.write(b'{"component_key": 3}\n')
    with pytest.raises(UserError, match=r"components\.jsonl \(line at byte \d+\): not a ComponentData"):
        build_report(bad, workers=1)
    (bad / "harvest" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"config\.json: not a RunConfig"):
        build_report(bad)


def _score_lines(run_dir, scorer: str) -> list[dict]:
    """The last record per latent of a score log, as the report reads it."""
    out = {}
    for line in (run_dir / "scores" / f"{scorer}.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[r["latent"]] = r
    return list(out.values())


def test_random_dictionary_runs_are_marked(built, tmp_path):
    """A --random-dictionary control run says so on every page; a normal run does not."""
    synth, index = built
    assert 'id="random-control"' not in index.read_text()
    ctl = tmp_path / "control"
    shutil.copytree(synth.dir, ctl, ignore=shutil.ignore_patterns("report"))
    cfg = json.loads((ctl / "harvest" / "config.json").read_text())
    cfg["random_dictionary"] = True
    (ctl / "harvest" / "config.json").write_text(json.dumps(cfg))
    idx = build_report(ctl, workers=1)
    pages = [idx, *sorted(idx.parent.glob("latents/*/*.html"))[:3]]
    assert len(pages) == 4 and all('id="random-control"' in p.read_text() for p in pages)


def test_public_names_hide_local_paths_also_of_merged_runs():
    from engine.report.site import public_name

    assert public_name("/home/alice/data/a.txt") == "a.txt"
    assert public_name("google/gemma-2-2b") == "google/gemma-2-2b"  # a hub name stays whole
    assert public_name("/tmp/rv/a.txt + /home/alice/b.txt") == "a.txt + b.txt"  # engine.harvest merge's datasets
    assert public_name("wikitext + ./local/part2.jsonl") == "wikitext + part2.jsonl"
