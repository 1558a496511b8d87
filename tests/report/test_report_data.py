"""engine.report.data without pages: the append-only log reader, query semantics and plot geometry.

The query semantics are checked against an independent reference implementation
on random tables.
"""

from __future__ import annotations

import random

import msgspec
import pytest

from engine.core.errors import UserError
from engine.core.jsonl import JsonlLog
from engine.core.schemas import Explanation
from engine.report.data import LatentTable, histogram_plot, value_plot

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
