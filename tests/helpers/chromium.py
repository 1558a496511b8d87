"""Headless Debian chromium driven by Playwright, and engine.serve on a background thread.

Never runs `playwright install`: the browser is the system's /usr/bin/chromium
(`apt-get install -y chromium chromium-driver`, `make browser`). Tests skip with
that instruction when either piece is missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
"Screenshots land here: tests/artifacts/ (gitignored)."


@contextmanager
def chromium_page(profile_dir: Path) -> Iterator:
    """A Playwright page in a fresh headless chromium profile. `page.errors` collects page errors
    and dialogs (an alert would mean dataset text ran as script)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed -- pip install playwright (it drives Debian's chromium; never `playwright install`)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium not found at {CHROMIUM} -- apt-get install -y chromium chromium-driver (or `make browser`)")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile_dir), executable_path=CHROMIUM, headless=True, args=ARGS,
                                                   viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page()
            page.errors = []
            page.on("pageerror", lambda e: page.errors.append(f"pageerror: {e}"))
            page.on("dialog", lambda d: (page.errors.append(f"dialog: {d.message}"), d.dismiss()))
            page.on("console", lambda m: "Content Security Policy" in m.text and page.errors.append(f"csp: {m.text}"))
            yield page
        finally:
            ctx.close()


@contextmanager
def running_server(run_dir: Path, live: bool = False) -> Iterator[str]:
    """engine.serve on 127.0.0.1, a free port, its own event loop thread; yields the base URL.
    live: with try-your-own-text running the run's model (what `python -m engine.serve` passes)."""
    from engine.report.serve import make_app, serve
    from engine.serve import load_model_and_dictionaries

    loop = asyncio.new_event_loop()
    started: dict = {}
    ready = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["runner"] = loop.run_until_complete(serve(make_app(run_dir, model_loader=load_model_and_dictionaries if live else None), "127.0.0.1", 0))
        except BaseException as e:  # surfaced to the test below
            started["error"] = e
            ready.set()
            return
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=main, daemon=True)
    t.start()
    ready.wait(60)
    if "error" in started:
        raise started["error"]
    runner = started["runner"]
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()
