"""Serve a run's report live from aiohttp on localhost.

    python -m engine.serve RUN_DIR [--host 127.0.0.1] [--port 8000]

The pages are the static report's pages (`engine.report.render_latent` /
`render_index`, same templates, same URLs), rendered on request; the index
table asks the server instead of reading chunk files:

  GET /index.html                       summary and latent table
  GET /latents/<lat//1000>/<lat>.html   one latent's page
  GET /api/latents?q=&sort=&dir=&page=  {"rows", "total", "page", "page_size", "fields"}
                                        (q: words all found in label/search label/key;
                                         sort: latent|density|max_act|<scorer>:<metric>;
                                         dir: asc|desc; page: 0-based)
  GET /api/latents/<lat>                that latent's ComponentData line (JSON)
  GET /assets/...                       CSS and JS

Start-up reads only the scalar head of each components.jsonl line and remembers
its byte offset; a page decodes its one line on request. Explanations and
scores are re-read incrementally on each request, so labels appear while
`engine.interpret` / scoring are still appending.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from tqdm import tqdm

from engine.core.cli import RUN_DIR, parse_config
from engine.core.errors import UserError
from engine.report.data import PAGE_SIZE, ROW_FIELDS, LatentTable, RowFields, RunData, latent_href
from engine.report.site import ASSETS, render_index, render_latent

MAX_PAGE_SIZE = 1000
"Largest page_size /api/latents answers."


class Viewer:
    """A run opened for serving: where each latent's line starts, and the index table."""

    def __init__(self, run_dir: Path):
        self.run = RunData(run_dir)
        self.offsets: dict[int, int] = {}
        "latent -> byte offset of its components.jsonl line."
        self.fields: list[RowFields] = []
        size = self.run.components_path.stat().st_size
        with tqdm(total=size, unit="B", unit_scale=True, desc="index components", disable=size < 64 << 20) as bar:
            for off, line in self.run.scan():
                f = self.run.decode_row_fields(line, off)
                self.offsets[f.latent] = off
                self.fields.append(f)
                bar.update(len(line))
        self._rebuild()

    def _rebuild(self) -> None:
        self.table: LatentTable = self.run.table(self.fields)
        self.labels = self.run.labels()
        self._index_html: str | None = None

    def index_html(self) -> str:
        if self._index_html is None:
            self._index_html = render_index(self.run, self.table, "api")
        return self._index_html

    def refresh(self) -> None:
        """Pick up explanations and scores appended since the last request."""
        if self.run.annotations.refresh():
            self._rebuild()

    def line(self, latent: int) -> bytes | None:
        off = self.offsets.get(latent)
        if off is None:
            return None
        with open(self.run.components_path, "rb") as f:
            f.seek(off)
            return f.readline()


VIEWER = web.AppKey("viewer", Viewer)


def _int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}={raw!r} is not an integer") from None


async def index(request: web.Request) -> web.Response:
    v = request.app[VIEWER]
    v.refresh()
    return web.Response(text=v.index_html(), content_type="text/html")


async def latent_page(request: web.Request) -> web.Response:
    v = request.app[VIEWER]
    name = request.match_info["name"]
    try:
        latent = int(name.removesuffix(".html"))
    except ValueError:
        raise web.HTTPNotFound() from None
    line = v.line(latent)
    if line is None or not name.endswith(".html") or request.path != "/" + latent_href(latent):
        raise web.HTTPNotFound(text=f"no harvested latent at {request.path}")
    v.refresh()
    c = v.run.decode_component(line, v.offsets[latent])
    return web.Response(text=render_latent(v.run, c, v.labels), content_type="text/html")


async def api_latents(request: web.Request) -> web.Response:
    v = request.app[VIEWER]
    v.refresh()
    q = request.query.get("q", "")
    sort = request.query.get("sort", "latent")
    direction = request.query.get("dir", "asc")
    if direction not in ("asc", "desc"):
        raise web.HTTPBadRequest(text=f"dir={direction!r} -- use asc or desc")
    page, page_size = _int(request, "page", 0), _int(request, "page_size", PAGE_SIZE)
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise web.HTTPBadRequest(text=f"page_size={page_size} -- use 1..{MAX_PAGE_SIZE}")
    try:
        res = v.table.query(q, sort, direction == "desc", page, page_size)
    except UserError as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    return web.json_response(dict(rows=res.rows, total=res.total, page=res.page, page_size=res.page_size, fields=ROW_FIELDS))


async def api_latent(request: web.Request) -> web.Response:
    v = request.app[VIEWER]
    try:
        line = v.line(int(request.match_info["latent"]))
    except ValueError:
        line = None
    if line is None:
        raise web.HTTPNotFound(text=f"no harvested latent {request.match_info['latent']!r}")
    return web.Response(body=line.rstrip(b"\n"), content_type="application/json")


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/index.html")


def make_app(run_dir: Path) -> web.Application:
    app = web.Application()
    app[VIEWER] = Viewer(Path(run_dir))
    app.router.add_get("/", root)
    app.router.add_get("/index.html", index)
    app.router.add_get("/latents/{shard}/{name}", latent_page)
    app.router.add_get("/api/latents", api_latents)
    app.router.add_get("/api/latents/{latent}", api_latent)
    app.router.add_static("/assets", ASSETS)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving `app`; returns the runner (its `addresses` give the bound port when port=0)."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use -- pass another --port (0 picks a free one)") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}) -- check --host and --port") from None
    return runner


@dataclass(frozen=True)
class ServeConfig:
    """`engine.serve`: where to listen."""

    host: str = "127.0.0.1"
    "Interface to listen on (default: this machine only)."
    port: int = 8000
    "TCP port (0 picks a free one)."


def main(argv: list[str] | None = None) -> None:
    pos, a = parse_config(ServeConfig, argv, prog="python -m engine.serve", doc=__doc__, positionals=[RUN_DIR])
    app = make_app(pos.run_dir)

    async def run_forever() -> None:
        runner = await serve(app, a.host, a.port)
        host, port = runner.addresses[0][:2]
        print(f"serving {pos.run_dir} at http://{host}:{port}/index.html (Ctrl-C to stop)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run_forever())
    except KeyboardInterrupt:
        print("stopped")

