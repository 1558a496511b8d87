"""engine.report / engine.serve / engine.report_data on a synthetic run (no browser).

The synthetic run (tests/browser/synthetic_run.py) computes every statistic by
brute force; these tests check what the pages and the index data say against it
and against independent reference implementations of the query semantics.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.errors import UserError, run_cli
from engine.report import build_report, examples_html, main as report_main
from engine.report_data import PAGE_SIZE, JsonlLog, LatentTable, RunData, histogram_plot, latent_href, value_plot
from engine.schemas import ActivationExample, ComponentData, Explanation
from engine.serve import VIEWER, make_app
from tests.browser.synthetic_run import COMPLETED_LABEL, XSS_LABEL, XSS_REASONING, write_synthetic_run


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


def components(run: Path) -> dict[int, ComponentData]:
    dec = msgspec.json.Decoder(ComponentData)
    return {c.latent: c for c in map(dec.decode, (run / "harvest" / "components.jsonl").read_bytes().splitlines())}


# --------------------------------------------------------------------------- a tiny DOM


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, dict(attrs), parent, [], ""

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag=None, cls=None, id=None):
        return [n for n in self.iter() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes())
                and (id is None or n.attrs.get("id") == id)]

    def all_text(self):
        return self.text + "".join(c.all_text() + c.tail for c in self.children)


class Dom(HTMLParser):
    """Enough of a DOM to count elements and read text (stdlib parser: entities decoded)."""

    VOID = {"meta", "link", "br", "img", "input", "line", "hr"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.root.tail = ""
        self.cur = self.root
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        n.tail = ""
        self.cur.children.append(n)
        if tag not in self.VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        n.tail = ""
        self.cur.children.append(n)

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        if self.cur.children:
            self.cur.children[-1].tail += data
        else:
            self.cur.text += data


# --------------------------------------------------------------------------- append-only logs


def test_jsonl_log_reads_incrementally_and_waits_for_a_torn_line(tmp_path):
    enc = msgspec.json.Encoder()
    es = [Explanation(component_key=f"h/{i}", latent=i, label=f"l{i}", confidence="high", reasoning="", search_label="s",
                      source="llm", model="m", explainer="default", prompt_hash="", raw_response="", example_ids=[])
          for i in range(4)]
    path = tmp_path / "results.jsonl"
    lines = [enc.encode(e) + b"\n" for e in es]
    path.write_bytes(lines[0] + b"\n" + lines[1] + lines[2][:17])  # a blank line, then a torn one
    log = JsonlLog(path, Explanation)
    assert [e.latent for e in log.read_new()] == [0, 1]
    assert log.torn == 17
    with open(path, "ab") as f:
        f.write(lines[2][17:] + lines[3].rstrip(b"\n"))  # completed; the last line lacks only its newline
    assert [e.latent for e in log.read_new()] == [2, 3]
    assert log.torn == 0 and log.read_new() == []
    assert JsonlLog(tmp_path / "absent.jsonl", Explanation).read_new() == []


def test_jsonl_log_names_file_and_line_of_a_bad_middle_line(tmp_path):
    path = tmp_path / "detection.jsonl"
    path.write_bytes(b'{"x": 1}\n')
    with pytest.raises(UserError, match=r"detection\.jsonl:1: undecodable record"):
        JsonlLog(path, Explanation).read_new()


# --------------------------------------------------------------------------- query semantics


def reference_query(rows, q, sort_value, desc, page, page_size):
    """Filter, sort and page written independently of LatentTable (see report_data's docstring)."""
    terms = q.lower().split()
    keep = [r for r in rows if all(t in f"{r[2]}\n{r[3]}\n{r[1]}".lower() for t in terms)]
    present = [r for r in keep if sort_value(r) is not None]
    missing = sorted((r for r in keep if sort_value(r) is None), key=lambda r: r[0])
    if desc:
        present.sort(key=lambda r: (-sort_value(r), -r[0]))
    else:
        present.sort(key=lambda r: (sort_value(r), r[0]))
    ordered = present + missing
    return ordered[page * page_size : (page + 1) * page_size], len(ordered)


def test_query_matches_reference_on_random_tables():
    rng = random.Random(0)
    words = ["River", "stone", "<b>", "import", "été", "x"]
    sorts = [("latent", "latent"), ("density", "density"), ("max_act", "max act"), ("a:balanced_accuracy", "a"), ("a:auc", "a")]
    getters = [lambda r: r[0], lambda r: r[6], lambda r: r[8], lambda r: r[9][0], lambda r: r[9][1]]
    for trial in range(30):
        rows = []
        for lat in rng.sample(range(1000), rng.randint(0, 120)):
            label = " ".join(rng.choices(words, k=rng.randint(0, 3)))
            scores = [rng.choice([None, round(rng.random(), 1)]) for _ in range(2)]
            rows.append([lat, f"h/{lat}", label, rng.choice(words), "high", "llm", rng.choice([0.1, 0.2, 0.3]),
                         1, rng.random(), scores])
        rows.sort(key=lambda r: r[0])
        table = LatentTable(rows, sorts)
        for _ in range(10):
            k = rng.randrange(len(sorts))
            q = " ".join(rng.sample(["river", "STONE", "<b", "été", "imp", ""], rng.randint(0, 2)))
            desc, page, size = rng.random() < 0.5, rng.randint(0, 3), rng.choice([1, 7, 50])
            got = table.query(q, sorts[k][0], desc, page, size)
            want, total = reference_query(rows, q, getters[k], desc, page, size)
            assert (got.rows, got.total) == (want, total), (trial, q, sorts[k][0], desc, page, size)


def test_query_rejects_unknown_sort_and_negative_page():
    table = LatentTable([], [("latent", "latent")])
    with pytest.raises(UserError, match="unknown sort key 'nope'"):
        table.query(sort="nope")
    with pytest.raises(UserError, match="page=-1"):
        table.query(page=-1)


# --------------------------------------------------------------------------- plots


def test_histogram_plot_geometry_and_edge_check():
    edges = [10 ** (-3 + i * 0.5) for i in range(13)]
    counts = [0, 2, 8, 4, 0, 0, 1, 0, 0, 0, 0, 3]
    plot = histogram_plot(counts, edges)
    assert plot["max"] == 8 and plot["heights"] == [c / 8 for c in counts]
    assert plot["ticks"][0] == (0.0, "0.001") and plot["ticks"][-1] == (1.0, "1e+03")
    with pytest.raises(UserError, match="histogram_edges has 13 values but a component histogram has 11 bins"):
        histogram_plot(counts[:-1], edges)
    vals = [0.0, 0.25, 0.5, 0.99, 1.0]
    vp = value_plot(vals, 4, 0.0, 1.0)
    assert vp["counts"] == [1, 1, 1, 2] and vp["n_values"] == 5 and vp["median"] == 0.5


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


def meta_of(index_html: str) -> dict:
    m = re.search(r'<script id="meta" type="application/json">(.*?)</script>', index_html, re.S)
    return json.loads(m[1])


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
    for lat in synth.latents[:: max(1, len(synth.latents) // 25)] + [synth.xss_latent]:
        c = comps[lat]
        dom = Dom((index.parent / latent_href(lat)).read_text())
        assert dom.root.find_all(id="label")[0].all_text() == synth.labels.get(lat, "not explained yet")
        assert dom.root.find_all(id="firing-count")[0].all_text() == f"{c.firing_count:,}"
        for box, exs in (("top-examples", c.top_examples), ("random-examples", c.random_examples)):
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
    import engine.report as report

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


# --------------------------------------------------------------------------- engine.serve


def test_serve_renders_the_static_pages_and_answers_queries(built, tmp_path):
    synth, index = built
    run_dir = tmp_path / "run"
    shutil.copytree(synth.dir, run_dir, ignore=shutil.ignore_patterns("report"))
    app = make_app(run_dir)
    table = app[VIEWER].table

    async def scenario():
        async with TestClient(TestServer(app)) as client:
            for lat in synth.latents[:5] + [synth.xss_latent]:
                r = await client.get("/" + latent_href(lat))
                assert r.status == 200
                assert await r.text() == (index.parent / latent_href(lat)).read_text()  # one rendering path
            for q, sort, d, page in [("", "latent", "asc", 0), (synth.word, "density", "desc", 0),
                                     ("", "detection:balanced_accuracy", "desc", 1), ("the", "fuzzing:balanced_accuracy", "asc", 0)]:
                r = await client.get("/api/latents", params=dict(q=q, sort=sort, dir=d, page=page))
                got = await r.json()
                want = table.query(q, sort, d == "desc", page)
                assert got["rows"] == json.loads(msgspec.json.encode(want.rows)) and got["total"] == want.total
                assert got["page_size"] == PAGE_SIZE
            meta = meta_of(await (await client.get("/index.html")).text())
            assert meta["mode"] == "api" and meta["n"] == len(synth.latents)
            for url, code in [("/api/latents?sort=bogus", 400), ("/api/latents?page=x", 400), ("/api/latents?dir=up", 400),
                              ("/api/latents?page_size=0", 400), (f"/latents/999/{synth.latents[0]}.html", 404),
                              (f"/latents/000/{synth.dead[0]}.html", 404), ("/latents/000/x.html", 404),
                              ("/api/latents/123456", 404), ("/assets/../harvest/config.json", 404), ("/", 200)]:
                assert (await client.get(url)).status == code, url
            raw = await (await client.get(f"/api/latents/{synth.latents[3]}")).read()
            assert msgspec.json.decode(raw, type=ComponentData) == components(run_dir)[synth.latents[3]]
            assert (await client.get("/assets/index.js")).status == 200
            # the interpret step completes its torn line: the label shows up without a restart
            lat = synth.latents[1]
            before = await (await client.get("/api/latents", params=dict(q=COMPLETED_LABEL))).json()
            assert before["total"] == 0
            with open(run_dir / "interpretations" / "results.jsonl", "ab") as f:
                f.write(synth.torn_line[40:])
            after = await (await client.get("/api/latents", params=dict(q=COMPLETED_LABEL))).json()
            assert [r[0] for r in after["rows"]] == [lat]
            page = await (await client.get("/" + latent_href(lat))).text()
            assert Dom(page).root.find_all(id="label")[0].all_text() == COMPLETED_LABEL

    asyncio.run(scenario())


def test_serve_cli_reports_a_busy_port(synth, capsys):
    import socket

    from engine.serve import main as serve_main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            run_cli(serve_main, [str(synth.dir), "--port", str(port)])
    assert e.value.code == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


