"""engine.serve on a synthetic run (no browser): the same pages as the static site, the query API, live
updates from the logs, a busy port.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.core.errors import run_cli
from engine.core.schemas import ComponentData
from engine.report.data import PAGE_SIZE, latent_href
from engine.report.serve import VIEWER, make_app
from engine.report.site import build_report
from tests.helpers.report_pages import Dom, meta_of
from tests.helpers.report_run import COMPLETED_LABEL, write_synthetic_run
from tests.helpers.run_files import components_by_latent as components


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The synthetic run and its static site: engine.serve renders the very same pages."""
    synth = write_synthetic_run(tmp_path_factory.mktemp("serve") / "run", n_latents=200)
    return synth, build_report(synth.dir, workers=1)


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


def test_serve_cli_reports_a_busy_port(built, capsys):
    import socket

    from engine.report.serve import main as serve_main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            run_cli(serve_main, [str(built[0].dir), "--port", str(port)])
    assert e.value.code == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_empty_api_parameters_mean_their_defaults(built):
    """The README's own `?q=&sort=&dir=&page=` is the default query (latent order, ascending, page 0)."""
    synth, _ = built
    app = make_app(synth.dir)
    want = app[VIEWER].table.query()

    async def scenario():
        async with TestClient(TestServer(app)) as client:
            for url in ("/api/latents?q=&sort=&dir=&page=", "/api/latents?sort=&dir=", "/api/latents?page=&page_size="):
                r = await client.get(url)
                assert r.status == 200, url
                got = await r.json()
                assert [row[0] for row in got["rows"]] == [row[0] for row in want.rows] and got["total"] == want.total
            assert [row[0] for row in want.rows] == synth.latents[:PAGE_SIZE]

    asyncio.run(scenario())


def test_host_header_is_checked_and_every_response_has_csp_and_nosniff(built):
    synth, _ = built
    lat = synth.latents[0]

    async def scenario(app, hosts):
        async with TestClient(TestServer(app)) as client:
            out = {}
            for host in hosts:
                rs = [await client.get(u, headers={"Host": host}) for u in ("/index.html", "/" + latent_href(lat),
                                                                           "/api/latents", "/assets/report.css", "/nowhere")]
                out[host] = [r.status for r in rs]
                for r in rs:
                    assert r.headers["X-Content-Type-Options"] == "nosniff"
                    csp = r.headers["Content-Security-Policy"]
                    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            return out

    loopback = asyncio.run(scenario(make_app(synth.dir), ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST",
                                                          "evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.1.2.3"]))
    assert loopback.pop("evil.example") == loopback.pop("evil.example:8000") == loopback.pop("127.0.0.1.evil.example") \
        == loopback.pop("10.1.2.3") == [403] * 5
    assert all(codes == [200, 200, 200, 200, 404] for codes in loopback.values())
    # bound to every interface: IP addresses and --allow-host names pass, a rebinding DNS name does not
    wild = asyncio.run(scenario(make_app(synth.dir, "0.0.0.0", ("viewer.lab",)), ["10.1.2.3:8000", "viewer.lab", "evil.example"]))
    assert wild == {"10.1.2.3:8000": [200, 200, 200, 200, 404], "viewer.lab": [200, 200, 200, 200, 404], "evil.example": [403] * 5}


def test_bad_requests_are_one_log_line_each(built, capfd):
    import socket
    from urllib.parse import urlsplit

    from tests.helpers.chromium import running_server

    synth, _ = built
    bad = [b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
           b"GET / HTTP/1.1\r\n\x00bad\r\n\r\n",
           b"GET /api/latents?dir=up HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
           b"GET /index.html HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"]
    capfd.readouterr()
    with running_server(synth.dir) as base:
        u = urlsplit(base)
        for raw in bad:
            with socket.create_connection((u.hostname, u.port), timeout=10) as s:
                s.sendall(raw)
                assert s.recv(4096).split(b" ")[1] in (b"400", b"403")
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == len(bad), err
    assert all(ln.startswith("engine.serve: ") for ln in lines), err
    assert "Traceback" not in err and "BadHttpMessage" in lines[0] and "dir='up'" in lines[2] and "evil.example" in lines[3]


def test_serve_warns_when_binding_beyond_loopback(built):
    import subprocess
    import sys

    def first_lines(host: str) -> tuple[str, str]:
        p = subprocess.Popen([sys.executable, "-m", "engine.serve", str(built[0].dir), "--host", host, "--port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out = p.stdout.readline()  # "serving ... at http://HOST:PORT/index.html": the checks ran before it
        finally:
            p.terminate()
            _, err = p.communicate(timeout=30)
        return out, err

    out, err = first_lines("0.0.0.0")
    assert out.startswith("serving ") and "warning: --host 0.0.0.0 serves this run" in err
    from engine.report.guard import is_loopback  # the default and other loopback binds stay quiet

    assert [is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "0.0.0.0", "::", "10.0.0.5")] == \
        [True, True, True, True, False, False, False]


def test_live_text_refuses_bad_bodies_in_one_line(built):
    from engine.report.live import MAX_CHARS

    synth, _ = built
    app = make_app(synth.dir)  # no model loader: what the bare report app (not python -m engine.serve) gets

    async def scenario():
        async with TestClient(TestServer(app)) as client:
            info = await (await client.get("/api/live")).json()
            assert info["live"] is False and info["max_chars"] == MAX_CHARS
            cases = [(dict(data="text=hi", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415, "JSON"),
                     (dict(data="{not json", headers={"Content-Type": "application/json"}), 400, "not JSON"),
                     (dict(json=["a"]), 400, "JSON object"), (dict(json={"text": ""}), 400, "text:"),
                     (dict(json={"text": "x" * (MAX_CHARS + 1)}), 400, f"at most {MAX_CHARS}"),
                     (dict(json={"text": "hi", "latent": -1}), 400, "latent:"),
                     (dict(json={"text": "hi", "latent": True}), 400, "latent:"),
                     (dict(json={"text": "hi", "latent": synth.latents[0]}), 503, "python -m engine.serve")]
            for kwargs, code, words in cases:
                r = await client.post("/api/live", **kwargs)
                text = await r.text()
                assert r.status == code and words in text and "\n" not in text.strip(), (kwargs, r.status, text)

    asyncio.run(scenario())


@pytest.mark.parametrize("bos, eos, head", [(7, 9, [7]), (None, 9, [9]), (None, None, [])],
                         ids=["BOS", "EOS for BOS", "neither"])
def test_live_text_starts_as_the_harvest_starts_a_sequence(tmp_path, bos, eos, head):
    """The typed text is replayed after the start token the harvest puts first (BOS, else EOS, else none), and
    every one of its tokens gets its own activations back."""
    from types import SimpleNamespace

    from engine.report.live import LiveText

    seen = []

    class Tok:
        bos_token_id, eos_token_id = bos, eos

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(ch) - 96 for ch in text]}  # a -> 1, b -> 2, ...

        def decode(self, ids):
            return "".join(chr(i + 96) for i in ids)

    def activations(ids, latents):
        seen.append(ids[0].tolist())
        return ids[..., None].float().expand(*ids.shape, len(latents)).clone()  # latent value = token id

    loader = lambda run_dir, device: SimpleNamespace(tokenizer=Tok(), activations=activations)  # noqa: E731
    live = LiveText(tmp_path, SimpleNamespace(n_latents=2, context_length=16), ["h/0", "h/1"], loader)
    out = live.compute("abc", 1)
    assert seen == [[*head, 1, 2, 3]] and out["activations"] == [1.0, 2.0, 3.0] and out["tokens"] == ["a", "b", "c"]
