"""Serve a run's report live from aiohttp on localhost.

    python -m engine.serve RUN_DIR [--host 127.0.0.1] [--port 8000] [--allow-host NAME ...] [--device cpu]

The pages are the static report's pages (`engine.report.render_latent` /
`render_index`, same templates, same URLs), rendered on request; the index
table asks the server instead of reading chunk files:

  GET /index.html                       summary and latent table
  GET /latents/<lat//1000>/<lat>.html   one latent's page
  GET /api/latents?q=&sort=&dir=&page=  {"rows", "total", "page", "page_size", "fields"}
                                        (q: words all found in label/search label/key;
                                         sort: latent|density|max_act|<scorer>:<metric>;
                                         dir: asc|desc; page: 0-based)
                                        (an empty parameter means its default)
  GET /api/latents/<lat>                that latent's ComponentData line (JSON)
  GET /api/live                         {"live": true, "max_chars", "max_tokens", "n_latents"}
  POST /api/live  {"text", "latent"?}   the run's model and dictionaries on that text
                                        (engine/report/live.py: tokens, the latent's activation
                                        on each, the latents firing most)
  GET /assets/...                       CSS and JS

Requests are answered only when their Host header names this server, every
response carries a Content-Security-Policy and nosniff, and each bad request
is one log line (engine/report/guard.py).

Start-up reads only the scalar head of each components.jsonl line and remembers
its byte offset; a page decodes its one line on request. Explanations and
scores are re-read incrementally on each request, so labels appear while
`engine.interpret` / scoring are still appending.
"""

from __future__ import annotations

import asyncio
import errno
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from tqdm import tqdm

from engine.core.cli import RUN_DIR, parse_config
from engine.core.errors import UserError
from engine.report import guard
from engine.report.data import PAGE_SIZE, ROW_FIELDS, LatentTable, RowFields, RunData, latent_href
from engine.report.directions import component_keys
from engine.report.live import LiveText
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
LIVE = web.AppKey("live", LiveText)


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
    sort = request.query.get("sort") or "latent"
    direction = request.query.get("dir") or "asc"
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


async def live_info(request: web.Request) -> web.Response:
    return web.json_response(request.app[LIVE].info())


async def live_text(request: web.Request) -> web.Response:
    live = request.app[LIVE]
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send the text as JSON: {\"text\": ..., \"latent\": ...}")
    if request.content_length is None or request.content_length > 8 * live.info()["max_chars"] + 256:
        raise web.HTTPRequestEntityTooLarge(max_size=8 * live.info()["max_chars"] + 256, actual_size=request.content_length or 0,
                                            text=f"the body must be JSON of at most {live.info()['max_chars']} characters of text")
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not JSON -- send {\"text\": ..., \"latent\": ...}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object {\"text\": ..., \"latent\": ...}")
    try:
        text, latent = live.check(body.get("text"), body.get("latent"))
    except UserError as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    if live.busy.locked():
        raise web.HTTPTooManyRequests(text="another text is being computed -- try again in a moment")
    async with live.busy:
        try:
            out = await asyncio.get_running_loop().run_in_executor(None, live.compute, text, latent)
        except UserError as e:
            raise web.HTTPServiceUnavailable(text=str(e)) from None
    labels = request.app[VIEWER].labels
    out["top"] = [[*t, labels.get(t[0], "")] for t in out["top"]]
    return web.json_response(out)


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/index.html")


def make_app(run_dir: Path, host: str = "127.0.0.1", allow_hosts: tuple[str, ...] = (), model_loader=None,
             device: str = "cpu") -> web.Application:
    """The viewer app; `host` is the address it will be bound to (Host headers are checked against it);
    `model_loader(run_dir, device)` runs try-your-own-text (engine/report/live.py; engine.serve passes the harvest's)."""
    app = web.Application(middlewares=[guard.middleware(guard.HostCheck(host, tuple(allow_hosts)))],
                          client_max_size=1 << 16)
    app.on_response_prepare.append(guard.security_headers)
    app[VIEWER] = Viewer(Path(run_dir))
    run = app[VIEWER].run
    app[LIVE] = LiveText(run.dir, run.config, component_keys(run.config), model_loader, device)
    app.router.add_get("/", root)
    app.router.add_get("/index.html", index)
    app.router.add_get("/latents/{shard}/{name}", latent_page)
    app.router.add_get("/api/latents", api_latents)
    app.router.add_get("/api/latents/{latent}", api_latent)
    app.router.add_get("/api/live", live_info)
    app.router.add_post("/api/live", live_text)
    app.router.add_static("/assets", ASSETS)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving `app`; returns the runner (its `addresses` give the bound port when port=0)."""
    guard.install_logging()
    runner = web.AppRunner(app, access_log=None)
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
    allow_host: tuple[str, ...] = ()
    "Extra names the Host header may carry (e.g. the name a reverse proxy or another machine uses)."
    device: str = "cpu"
    "Where the model and dictionaries run for try-your-own-text (cpu, cuda, cuda:1)."


def main(argv: list[str] | None = None, model_loader=None) -> None:
    pos, a = parse_config(ServeConfig, argv, prog="python -m engine.serve", doc=__doc__, positionals=[RUN_DIR])
    if not guard.is_loopback(a.host):
        print(f"warning: --host {a.host} serves this run (its examples, labels and the model on typed text) to every "
              "machine that can reach this one; use the default 127.0.0.1 unless that is what you want", file=sys.stderr)
    app = make_app(pos.run_dir, a.host, a.allow_host, model_loader, a.device)

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

