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
