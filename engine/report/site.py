"""Static HTML report of a run: an index of every latent and one page per latent.

    python -m engine.report RUN_DIR [--out RUN_DIR/report] [--workers N]

Writes RUN/report/index.html (open it from disk, no server needed):

  index.html                 summary, score distributions, the latent table
  assets/                    report.css, index.js (no network, no CDN)
  data/s<k>/<chunk>.js       index rows sorted by sort key k, CHUNK_ROWS per file,
                             loaded on demand by index.js with <script> tags
  latents/<lat//1000>/<lat>.html   one page per harvested latent

`engine.serve` renders the same pages from the same templates on request; the
functions here (`render_latent`, `render_index`) are the only rendering path.
Page layout lives in templates/*.html (Jinja2); the fragments repeated
hundreds of times per page (example lines, ranked tables, SVG histograms) are
built by the small functions below, which is what keeps 100k pages fast
(bench/report.py). All dataset text (tokens, labels, keys, reasoning) is
escaped: Jinja2 autoescaping in the templates, `html.escape` in the fragments.

Library use: `build_report(run_dir) -> Path` of index.html.
"""

from __future__ import annotations

import html
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2
import msgspec
from markupsafe import Markup
from tqdm import tqdm

from engine.core.cli import RUN_DIR, parse_config
from engine.core.errors import UserError
from engine.core.rundir import RunDir
from engine.core.schemas import ActivationExample, ComponentData, Scored
from engine.report.data import PAGE_SIZE, ROW_FIELDS, LatentTable, RowFields, RunData, latent_href

TEMPLATES = Path(__file__).parent / "templates"
ASSETS = TEMPLATES / "assets"
CHUNK_ROWS = 1000
"Index rows per static data chunk file."
SPLIT_BYTES = 8 << 20
"components.jsonl bytes per unit of work when pages are written by several processes."


# --------------------------------------------------------------------------- text and numbers


_VISIBLE = str.maketrans({"\n": "\u21b5", "\r": "\u240d", "\t": "\u21e5"})


@cache
def token_html(tok: str) -> str:
    """Escaped token with line breaks and tabs made visible (spaces stay; the CSS keeps them)."""
    return html.escape(tok.translate(_VISIBLE)) if tok else '<i class="ws">\u2205</i>'


def num(x: float | int | None) -> str:
    """4 significant digits; the index table's JavaScript formats the same way."""
    if x is None:
        return "\u2013"
    a = abs(x)
    if a != 0 and (a < 1e-4 or a >= 1e6):
        return f"{x:.3e}"
    return f"{x:.4g}"


def esc(x) -> str:
    return html.escape(str(x))


def public_name(s: str) -> str:
    """A model, dataset or dictionary as a shared page shows it: a local path (absolute, home-relative or
    existing here) becomes its last component; a hub name such as `org/model` stays whole."""
    if not s:
        return s
    if " + " in s:  # a merged run's datasets (engine.harvest merge): each part on its own
        return " + ".join(public_name(part) for part in s.split(" + "))
    p = Path(s).expanduser()
    if s.startswith(("/", "~", "./", "../", "\\")) or (len(s) > 1 and s[1] == ":") or p.exists():
        return p.name or s
    return s


class _Memo(dict):
    """token string -> its markup, computed once per distinct token (vocabulary-sized)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def __missing__(self, tok: str) -> str:
        self[tok] = out = self.fn(tok)
        return out


_ESCAPED = _Memo(token_html)
_PLAIN = _Memo(lambda tok: f"<span>{token_html(tok)}</span>")
"A token where the latent is off."
_SHADED = [f'<span class="a{k}" title="' for k in range(1, 10)] + ['<span class="a9" title="']
"Opening of a token where the latent is on, by shade index floor(9 a / max) (index 9 only at the max)."


def examples_html(examples: list[ActivationExample], max_act: float) -> Markup:
    """One line per example: its activation, the tokens left of the firing token (right-aligned,
    so firing tokens line up), then the firing token (class `f`) and the tokens right of it.
    Tokens are shaded by activation a relative to the latent's max: class a<k>,
    k = min(9, floor(9 a / max) + 1), the value in the tooltip.

    A Python loop rather than a template loop: examples are most of a page's markup
    and keeping this loop lean keeps writing 100k pages fast (see bench/report.py)."""
    top = max([max_act, *(max(ex.activations, default=0.0) for ex in examples)])
    scale = 9.0 / top if top > 0 else 0.0
    plain, escaped, shaded = _PLAIN, _ESCAPED, _SHADED
    out = []
    for ex in examples:
        spans = [plain[t] if a <= 0 else f'{shaded[int(a * scale)]}{a:.4g}">{escaped[t]}</span>'
                 for t, a in zip(ex.tokens, ex.activations)]
        fi = ex.firing_index
        if 0 <= fi < len(spans):
            a = ex.activations[fi]
            shade = f" a{min(9, int(a * scale) + 1)}" if a > 0 else ""
            spans[fi] = f'<span class="f{shade}" title="{a:.4g}">{escaped[ex.tokens[fi]]}</span>'
        else:
            fi = len(spans)
        out.append(f'<div class="ex"><span class="v">{num(ex.activation)}</span><span class="l"><span>{"".join(spans[:fi])}'
                   f'</span></span><span class="r">{"".join(spans[fi:])}</span>'
                   f'<span class="loc" title="sequence:position">{ex.sequence}:{ex.position}</span></div>')
    return Markup("\n".join(out))


def scored_table_html(caption: str, items: list[Scored], value_name: str, labels: dict[int, str] | None = None,
                      counts: bool = True, has_page=None) -> Markup:
    """A ranked list as a table. With `labels` the entries are latents, linked to their pages
    (from a latent page) and followed by their labels; otherwise they are tokens. `has_page(latent)`,
    when given, says which latents have a page (the others never fired and are not linked)."""
    head = f"<th>{'latent' if labels is not None else 'token'}</th><th>{esc(value_name)}</th>"
    head += '<th title="joint count (or probability mass)">n</th>' if counts else ""
    rows = []
    for s in items:
        if labels is not None:
            lab = esc(labels.get(s.index, ""))
            if has_page is None or has_page(s.index):
                first = f'<td><a href="../../{latent_href(s.index)}">{esc(s.key)}</a> <span class="muted">{lab}</span></td>'
            else:
                first = f'<td>{esc(s.key)} <span class="muted">never fired</span></td>'
        else:
            first = f'<td class="tok">{token_html(s.key)}</td>'
        cnt = f'<td class="num muted">{num(s.count)}</td>' if counts else ""
        rows.append(f'<tr>{first}<td class="num">{num(s.value)}</td>{cnt}</tr>')
    if not rows:
        rows.append(f'<tr><td colspan="{3 if counts else 2}" class="muted">none</td></tr>')
    return Markup(f'<table class="scored"><caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead><tbody>'
                  + "".join(rows) + "</tbody></table>")


def histogram_svg(plot: dict, title: str, css_class: str = "histogram", width: int = 480, height: int = 150) -> Markup:
    """Bar chart of report_data.histogram_plot geometry as inline SVG; each bar's tooltip gives its count and bin."""
    ml, mr, mt, mb = 44, 22, 18, 30
    pw, ph = width - ml - mr, height - mt - mb
    bw = pw / plot["n"]
    edges, counts = plot["edges"], plot["counts"]
    parts = [f'<svg class="{css_class}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{esc(title)}">',
             f'<text class="ptitle" x="{ml}" y="12">{esc(title)}</text>',
             f'<line class="axis" x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}"/>',
             f'<text class="tick" x="{ml - 4}" y="{mt + 4}" text-anchor="end">{plot["max"]:,}</text>',
             f'<text class="tick" x="{ml - 4}" y="{mt + ph}" text-anchor="end">0</text>']
    for i, h in enumerate(plot["heights"]):
        if h > 0:
            parts.append(f'<rect class="bar" x="{ml + i * bw:.1f}" y="{mt + ph * (1 - h):.1f}" width="{max(bw - 1, 1):.1f}" '
                         f'height="{ph * h:.1f}"><title>{counts[i]:,} in [{edges[i]:.3g}, {edges[i + 1]:.3g})</title></rect>')
    for x, label in plot["ticks"]:
        parts.append(f'<text class="tick" x="{ml + x * pw:.1f}" y="{height - 12}" text-anchor="middle">{esc(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# --------------------------------------------------------------------------- rendering


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(num=num, name=public_name)
    env.globals.update(examples_html=examples_html, scored_table=scored_table_html, histogram=histogram_svg)
    return env


def render_latent(run: RunData, c: ComponentData, labels: dict[int, str]) -> str:
    """HTML of one latent's page (path latent_href(c.latent) under the report root)."""
    page = run.latent_page(c, labels)
    return environment().get_template("latent.html").render(cfg=run.config, root="../../", **page)


def _json_for_script(obj) -> Markup:
    """JSON safe inside a <script> element (no `<`, `>`, `&` that could close it)."""
    raw = msgspec.json.encode(obj).decode()
    return Markup(raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def render_index(run: RunData, table: LatentTable, mode: str) -> str:
    """HTML of index.html; `mode` is "static" (rows from data/ chunks) or "api" (rows from engine.serve)."""
    meta = dict(mode=mode, n=len(table.rows), page_size=PAGE_SIZE, chunk_size=CHUNK_ROWS, fields=ROW_FIELDS,
                sorts=[dict(key=k, title=t, dir=f"s{i}", n_present=table.order(i)[1]) for i, (k, t) in enumerate(table.sorts)])
    return environment().get_template("index.html").render(root="", meta_json=_json_for_script(meta), **run.index_page(table))


# --------------------------------------------------------------------------- static site


def write_pages(run: RunData, labels: dict[int, str], out: Path, start: int = 0, end: int | None = None) -> list[RowFields]:
    """Write the pages of the components.jsonl lines starting in bytes [start, end); return their row fields."""
    made: set[Path] = set()
    fields = []
    for off, line in run.scan(start, end):
        c = run.decode_component(line, off)
        path = out / latent_href(c.latent)
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_text(render_latent(run, c, labels), encoding="utf-8")
        fields.append(RowFields(component_key=c.component_key, hookpoint=c.hookpoint, component_idx=c.component_idx,
                                latent=c.latent, firing_count=c.firing_count, firing_density=c.firing_density,
                                mean_activation=c.mean_activation, max_activation=c.max_activation))
    return fields


@cache
def _worker_state(run_dir: Path) -> tuple[RunData, dict[int, str]]:
    run = RunData(run_dir)
    return run, run.labels()


def _write_pages_in_worker(run_dir: Path, out: Path, start: int, end: int | None) -> list[RowFields]:
    run, labels = _worker_state(run_dir)
    return write_pages(run, labels, out, start, end)


def _splits(path: Path, size: int) -> list[tuple[int, int | None]]:
    n = path.stat().st_size
    bounds = list(range(0, n, size)) or [0]
    return [(b, bounds[k + 1] if k + 1 < len(bounds) else None) for k, b in enumerate(bounds)]


def write_index_data(table: LatentTable, out: Path) -> None:
    """data/s<k>/<chunk>.js: the rows in ascending order of sort key k, CHUNK_ROWS per file."""
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    enc = msgspec.json.Encoder()
    for k in range(len(table.sorts)):
        d = data / f"s{k}"
        d.mkdir(parents=True)
        order, _ = table.order(k)
        for c in range(0, len(order), CHUNK_ROWS):
            rows = [table.rows[i] for i in order[c : c + CHUNK_ROWS]]
            (d / f"{c // CHUNK_ROWS}.js").write_bytes(b"__latentRows(%d,%d," % (k, c // CHUNK_ROWS) + enc.encode(rows) + b");\n")


def build_report(run_dir: Path, out: Path | None = None, workers: int | None = None) -> Path:
    """Write the static report of `run_dir` (default into RUN/report); returns the path of index.html.

    workers: processes writing latent pages, each taking SPLIT_BYTES of components.jsonl at a time
    (default: CPU count, at most 8; 1, or a components.jsonl under 4 * SPLIT_BYTES, = in this process)."""
    run_dir = Path(run_dir)
    run = RunData(run_dir)
    out = Path(out) if out else RunDir(run_dir).report
    out.mkdir(parents=True, exist_ok=True)
    for name in run.annotations.torn_logs():
        print(f"report: skipped the torn last line of {name}", file=sys.stderr)
    workers = workers or min(os.cpu_count() or 1, 8)
    splits = _splits(run.components_path, SPLIT_BYTES)
    fields: list[RowFields] = []
    bar = tqdm(total=run.components_path.stat().st_size, unit="B", unit_scale=True, desc="report pages")
    if workers == 1 or len(splits) < 4:  # small runs: starting processes costs more than it saves
        labels = run.labels()
        for start, end in splits:
            fields += write_pages(run, labels, out, start, end)
            bar.update((end or bar.total) - start)
    else:
        # spawn: a fresh interpreter per worker (no forked threads); each reads the annotations once
        with ProcessPoolExecutor(min(workers, len(splits)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [(pool.submit(_write_pages_in_worker, run_dir, out, s, e), s, e) for s, e in splits]
            try:
                for fut, s, e in futures:
                    fields += fut.result()
                    bar.update((e or bar.total) - s)
            except BaseException:
                pool.shutdown(cancel_futures=True)  # a bad line fails the build now, not after every other range
                raise
    bar.close()
    table = run.table(fields)
    write_index_data(table, out)
    if (out / "assets").exists():
        shutil.rmtree(out / "assets")
    shutil.copytree(ASSETS, out / "assets")
    index = out / "index.html"
    index.write_text(render_index(run, table, "static"), encoding="utf-8")
    return index


@dataclass(frozen=True)
class ReportConfig:
    """`engine.report`: where the static site goes and how many processes write it."""

    out: str | None = None
    "Report directory (default RUN_DIR/report)."
    workers: int | None = None
    "Processes writing latent pages (default: CPUs, at most 8)."


def main(argv: list[str] | None = None) -> Path:
    pos, a = parse_config(ReportConfig, argv, prog="python -m engine.report", doc=__doc__, positionals=[RUN_DIR])
    if a.workers is not None and a.workers < 1:
        raise UserError(f"--workers {a.workers} -- give 1 or more")
    t = time.perf_counter()
    index = build_report(pos.run_dir, Path(a.out) if a.out else None, a.workers)
    print(f"report: {index} ({time.perf_counter() - t:.1f}s); open it in a browser or run python -m engine.serve {pos.run_dir}")
    return index
