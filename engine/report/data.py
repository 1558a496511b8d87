"""Load a run directory into what the report pages show.

Shared by `engine.report` (static site) and `engine.serve` (aiohttp): both turn
the same `RunData` into the same page dictionaries and render them with the same
templates, so a page served live is byte-identical to the page written to disk.

    run = RunData(Path("runs/demo"))
    table = run.table()                         # one IndexRow per harvested latent
    table.query(q="import", sort="density", desc=True, page=0)
    page = run.latent_page(component)           # dict for templates/latent.html

Inputs (see engine/core/schemas.py): harvest/config.json, harvest/components.jsonl,
and the optional append-only logs interpretations/results.jsonl and
scores/*.jsonl. The logs are read incrementally (`JsonlLog`): a torn last line,
what a writer leaves when it is killed mid-append, is skipped until it is
complete; any other undecodable line is an error naming file and line.

Index order: ascending sorts put missing values (no score yet, NaN) last and
break ties by latent; a descending sort is the exact reverse of the ascending
order over the present values, followed by the missing ones in latent order.
The static site's JavaScript relies on this to page descending sorts from the
ascending chunks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from engine.core.errors import UserError
from engine.core.jsonl import UNDECODABLE, JsonlLog
from engine.core.rundir import RunDir, primary
from engine.core.schemas import ComponentData, Explanation, ScoreResult
from engine.core.shards import family
from engine.report.directions import Directions
from engine.report.strata import stratum_groups

PAGE_SIZE = 50
"Rows per index page (static site and /api/latents)."
ROW_FIELDS = ("latent", "key", "label", "search_label", "confidence", "source", "density", "count", "max_act", "scores")
"Order of the values in one encoded IndexRow (static chunks and API rows)."
SCORE_METRICS = (("balanced_accuracy", "bal. acc"), ("auc", "AUC"))
"ScoreResult metrics shown as index columns (AUC only for scorers that report it)."
BASE_SORTS = (("latent", "latent"), ("density", "density"), ("max_act", "max act"))
"Sort keys every run has, with their titles; score columns add `<scorer>:<metric>`."


class RowFields(msgspec.Struct):
    """The scalar head of a ComponentData line; decoding it skips the examples."""

    component_key: str
    hookpoint: str
    component_idx: int
    latent: int
    firing_count: int
    firing_density: float
    mean_activation: float
    max_activation: float


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


# --------------------------------------------------------------------------- labels and scores


@dataclass(frozen=True)
class ScoreColumn:
    """One sortable score column of the index: a metric of one scorer."""

    scorer: str
    metric: str
    "A ScoreResult field name (balanced_accuracy, auc)."
    title: str

    @property
    def key(self) -> str:
        return f"{self.scorer}:{self.metric}"


class Annotations:
    """Explanations and scores of a run, refreshed from their logs as writers append."""

    def __init__(self, run_dir: Path):
        run = RunDir(run_dir)
        self.results_main = run.explanations()
        self.result_logs: dict[Path, JsonlLog[Explanation]] = {}
        "results.jsonl and its shard logs (engine.core.shards)."
        self.scores_dir = run.scores
        self.score_logs: dict[Path, JsonlLog[ScoreResult]] = {}
        self.explanations: dict[int, list[Explanation]] = {}
        "latent -> every explanation, in log order."
        self._seen: set[bytes] = set()
        "Digests of the explanations read: `engine.merge` moves shard records into the main log, read again."
        self.scores: dict[str, dict[int, ScoreResult]] = {}
        "scorer -> latent -> its last ScoreResult."
        self._columns: list[ScoreColumn] | None = None

    def refresh(self) -> bool:
        """Read what the logs gained since the last call; True when anything changed."""
        new = False
        for path in family(self.results_main):
            for e in self.result_logs.setdefault(path, JsonlLog(path, Explanation)).read_new():
                digest = hashlib.blake2b(msgspec.json.encode(e), digest_size=16).digest()
                if digest in self._seen:
                    continue
                self._seen.add(digest)
                self.explanations.setdefault(e.latent, []).append(e)
                new = True
        for path in sorted(self.scores_dir.glob("*.jsonl")) if self.scores_dir.is_dir() else []:
            log = self.score_logs.setdefault(path, JsonlLog(path, ScoreResult))
            for s in log.read_new():
                self.scores.setdefault(s.scorer, {})[s.latent] = s
                new = True
        if new:
            self._columns = None
        return new

    def torn_logs(self) -> list[str]:
        """'file (N bytes)' for every log whose unterminated last line the last read skipped."""
        logs = [*self.result_logs.values(), *self.score_logs.values()]
        return [f"{log.path} ({log.torn} bytes)" for log in logs if log.torn]

    def primary(self, latent: int) -> Explanation | None:
        """The explanation shown for a latent: its last error-free LLM one, else its last one."""
        return primary(self.explanations.get(latent, []))

    def columns(self) -> list[ScoreColumn]:
        """Score columns of the index: every scorer's balanced accuracy, and its AUC where it has one."""
        if self._columns is None:
            self._columns = []
            for scorer in sorted(self.scores):
                has_auc = any(r.auc is not None for r in self.scores[scorer].values())
                for metric, title in SCORE_METRICS:
                    if metric != "auc" or has_auc:
                        self._columns.append(ScoreColumn(scorer, metric, f"{scorer} {title}"))
        return self._columns

    def score_value(self, col: ScoreColumn, latent: int) -> float | None:
        r = self.scores.get(col.scorer, {}).get(latent)
        return None if r is None or r.error is not None else _finite(getattr(r, col.metric))


# --------------------------------------------------------------------------- index table


def _sort_value(row: list, sort_index: int):
    """Value of sort key `sort_index` (0 latent, 1 density, 2 max_act, 3+ score columns) in an encoded row."""
    if sort_index == 0:
        return row[0]
    if sort_index == 1:
        return row[6]
    if sort_index == 2:
        return row[8]
    return row[9][sort_index - 3]


@dataclass
class Page:
    """One page of index rows answering a query."""

    rows: list[list]
    "Encoded rows (ROW_FIELDS order)."
    total: int
    "Rows matching the query."
    page: int
    page_size: int


@dataclass
class LatentTable:
    """Every harvested latent as an index row; answers search / sort / page queries."""

    rows: list[list]
    "Encoded rows in latent order, fields as ROW_FIELDS."
    sorts: list[tuple[str, str]]
    "(key, title) of every sort key; index 0..2 are BASE_SORTS, then score columns."
    _orders: dict[int, tuple[list[int], int]] = field(default_factory=dict, init=False, repr=False)
    _hay: list[str] | None = field(default=None, init=False, repr=False)
    _matches: dict[tuple, list[int]] = field(default_factory=dict, init=False, repr=False)
    "Recent (terms, sort, desc) -> matching positions, so paging through a search does not re-scan."

    def sort_index(self, key: str) -> int:
        for i, (k, _) in enumerate(self.sorts):
            if k == key:
                return i
        raise UserError(f"unknown sort key {key!r} -- use one of {', '.join(k for k, _ in self.sorts)}")

    def order(self, sort_index: int) -> tuple[list[int], int]:
        """Ascending order of row positions (missing values last) and how many values are present."""
        if sort_index not in self._orders:
            vals = [_sort_value(r, sort_index) for r in self.rows]
            present = sorted((i for i, v in enumerate(vals) if v is not None), key=lambda i: (vals[i], self.rows[i][0]))
            missing = [i for i, v in enumerate(vals) if v is None]
            self._orders[sort_index] = (present + missing, len(present))
        return self._orders[sort_index]

    def ordered(self, sort_index: int, desc: bool) -> list[int]:
        asc, n_present = self.order(sort_index)
        return asc[:n_present][::-1] + asc[n_present:] if desc else asc

    def query(self, q: str = "", sort: str = "latent", desc: bool = False, page: int = 0, page_size: int = PAGE_SIZE) -> Page:
        """Rows whose label, search label or key contain every whitespace-separated term of `q`
        (case-insensitive), in sort order, page `page` (0-based)."""
        if page < 0 or page_size < 1:
            raise UserError(f"page={page} page_size={page_size} -- page must be >= 0 and page_size >= 1")
        sort_index = self.sort_index(sort)
        terms = tuple(q.lower().split())
        positions = self._matches.get((terms, sort_index, desc))
        if positions is None:
            positions = self.ordered(sort_index, desc)
            if terms:
                hay = self.haystacks()
                positions = [i for i in positions if all(t in hay[i] for t in terms)]
            if len(self._matches) >= 16:
                del self._matches[next(iter(self._matches))]
            self._matches[terms, sort_index, desc] = positions
        lo = page * page_size
        return Page([self.rows[i] for i in positions[lo : lo + page_size]], len(positions), page, page_size)

    def haystacks(self) -> list[str]:
        if self._hay is None:
            self._hay = [search_text(r) for r in self.rows]
        return self._hay


def search_text(row: list) -> str:
    """What a search matches against (index.js builds the same string)."""
    return f"{row[2]}\n{row[3]}\n{row[1]}".lower()


# --------------------------------------------------------------------------- the run


class RunData:
    """A run directory opened for reporting: config, the components file, explanations and scores."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        run = RunDir(self.dir)
        self.config_path = run.config
        self.components_path = run.components
        for p in (self.config_path, self.components_path):
            if not p.is_file():
                raise UserError(f"{p} not found -- {self.dir} is not a harvested run directory; "
                                f"run `python -m engine.harvest ... --out {self.dir}` first")
        self.config = run.load_config()
        if len(self.config.histogram_edges) < 2:
            raise UserError(f"{self.config_path}: histogram_edges has {len(self.config.histogram_edges)} values, "
                            "needs >= 2 -- re-run the harvest")
        self.annotations = Annotations(self.dir)
        self.annotations.refresh()
        self.directions = Directions(run.harvest, self.config)
        self.n_tokens = max(self.config.n_tokens, 1)
        self._row_dec = msgspec.json.Decoder(RowFields)
        self._comp_dec = msgspec.json.Decoder(ComponentData)

    # ---- components.jsonl

    def scan(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(byte offset, line) of every non-empty line that starts in [start, end)."""
        with open(self.components_path, "rb") as f:
            if start:
                f.seek(start - 1)
                f.readline()  # now at the first line starting at or after `start`
            off = f.tell()
            for line in f:
                if end is not None and off >= end:
                    return
                if line.strip():
                    yield off, line
                off += len(line)

    def decode_row_fields(self, line: bytes, offset: int) -> RowFields:
        try:
            return self._row_dec.decode(line)
        except UNDECODABLE as e:
            raise UserError(f"{self.components_path} (line at byte {offset}): not a ComponentData ({e}) -- re-run the harvest") from None

    def decode_component(self, line: bytes, offset: int) -> ComponentData:
        try:
            return self._comp_dec.decode(line)
        except UNDECODABLE as e:
            raise UserError(f"{self.components_path} (line at byte {offset}): not a ComponentData ({e}) -- re-run the harvest") from None

    # ---- index

    def index_row(self, c: RowFields | ComponentData) -> list:
        ann = self.annotations
        e = ann.primary(c.latent)
        scores = [ann.score_value(col, c.latent) for col in ann.columns()]
        return [c.latent, c.component_key, e.label if e else "", e.search_label if e else "", e.confidence if e else "",
                e.source if e else "", c.firing_density, c.firing_count, c.max_activation, scores]

    def sorts(self) -> list[tuple[str, str]]:
        return list(BASE_SORTS) + [(c.key, c.title) for c in self.annotations.columns()]

    def table(self, fields: list[RowFields]) -> LatentTable:
        return LatentTable(sorted((self.index_row(f) for f in fields), key=lambda r: r[0]), self.sorts())

    def labels(self) -> dict[int, str]:
        """latent -> shown label, for the titles of links between latent pages."""
        return {lat: e.label for lat in self.annotations.explanations if (e := self.annotations.primary(lat))}

    # ---- pages

    def latent_page(self, c: ComponentData, labels: dict[int, str]) -> dict:
        """Everything templates/latent.html needs for one latent (numbers, not markup)."""
        ann = self.annotations
        scores = []
        for scorer in sorted(ann.scores):
            r = ann.scores[scorer].get(c.latent)
            if r is not None:
                scores.append(r)
        return dict(
            c=c,
            href=latent_href(c.latent),
            explanations=ann.explanations.get(c.latent, []),
            primary=ann.primary(c.latent),
            scores=scores,
            hist_plot=histogram_plot(c.histogram, self.config.histogram_edges, self.config_path),
            corr_lists=[(name, getattr(c.correlations, name)) for name in ("precision", "recall", "pmi", "jaccard")],
            labels=labels,
            decoder_neighbours=self.directions.neighbours(c.latent),
            encoder_neighbours=self.directions.neighbours(c.latent, "encoder"),
            has_page=self.directions.has_page,
            logit_plot=histogram_plot(*lh) if (lh := self.directions.logit_histogram(c.latent)) else None,
            strata=stratum_groups(c),
        )

    def index_page(self, table: LatentTable) -> dict:
        """Summary numbers and score distributions for templates/index.html."""
        rows = table.rows
        cfg = self.config
        n_llm = sum(1 for r in rows if r[5] == "llm")
        n_labeled = sum(1 for r in rows if r[5])
        dists = []
        dens = [math.log10(r[6]) for r in rows if r[6] > 0]
        if dens:
            dists.append(("log10 firing density", value_plot(dens, 24)))
        for j, col in enumerate(self.annotations.columns()):
            vals = [v for r in rows if (v := r[9][j]) is not None]
            if vals:
                dists.append((col.title, value_plot(vals, 20, lo=0.0, hi=1.0)))
        return dict(cfg=cfg, n_rows=len(rows), n_dead=max(cfg.n_latents - len(rows), 0), n_llm=n_llm,
                    n_labeled=n_labeled, n_scorers=len(self.annotations.scores), dists=dists, sorts=table.sorts)


def latent_href(latent: int) -> str:
    """Path of a latent's page relative to the report root (static site and server alike)."""
    return f"latents/{latent // 1000:03d}/{latent}.html"


# --------------------------------------------------------------------------- plots (geometry only)


def histogram_plot(counts: list[int], edges: list[float], config_path: Path | str = "config.json") -> dict:
    """Bar heights in [0, 1] and edge tick labels for an activation histogram over `edges`."""
    if len(edges) != len(counts) + 1:
        raise UserError(f"{config_path}: histogram_edges has {len(edges)} values but a component histogram has "
                        f"{len(counts)} bins (needs bins + 1 edges) -- config.json and components.jsonl come from different harvests")
    top = max(counts, default=0) or 1
    n = len(counts)
    ticks = sorted({round(k * n / 4) for k in range(5)})
    return dict(n=n, heights=[c / top for c in counts], counts=counts, max=top,
                ticks=[(i / n, f"{edges[i]:.3g}") for i in ticks], edges=edges)


def value_plot(values: list[float], n_bins: int, lo: float | None = None, hi: float | None = None) -> dict:
    """Histogram geometry of raw values: equal-width bins over [lo, hi] (data range by default)."""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0
    counts = [0] * n_bins
    for v in values:
        counts[min(n_bins - 1, max(0, int((v - lo) / (hi - lo) * n_bins)))] += 1
    edges = [lo + (hi - lo) * i / n_bins for i in range(n_bins + 1)]
    plot = histogram_plot(counts, edges)
    s = sorted(values)
    plot.update(n_values=len(values), mean=sum(values) / len(values), median=s[len(s) // 2])
    return plot
