"""`FakeLLMServer`: the fake provider's aiohttp app, its routes and its lifecycle.

It serves the wire formats chosen with `wire` on 127.0.0.1 (port 0 = any free
port), either in the caller's event loop (`async with`) or from a background
thread (`start_in_thread` / `stop`), and counts requests in flight.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

from aiohttp import web

from clients.testing.batches_wire import AnthropicBatches
from clients.testing.openai_wire import OpenAIChat


class FakeLLMServer(AnthropicBatches, OpenAIChat):
    """The fake server: scripted faults, a token-bucket rate limit, a simulated prompt cache, batches.

    Its constructor (responder, faults, latency_s, rate_limit_rps, ...) is ProviderSimulation's."""

    # ------------------------------------------------------------------ routes

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._count])
        app.router.add_get("/stats", self._stats)
        if self.wire in ("anthropic", "both"):
            app.router.add_post("/v1/messages", self._messages)
            app.router.add_post("/v1/messages/batches", self._batch_create)
            app.router.add_get("/v1/messages/batches", self._batch_list)
            app.router.add_get("/v1/messages/batches/{id}", self._batch_get)
            app.router.add_get("/v1/messages/batches/{id}/results", self._batch_results)
            app.router.add_post("/v1/messages/batches/{id}/cancel", self._batch_cancel)
        if self.wire in ("openai", "both"):
            app.router.add_post("/v1/chat/completions", self._chat)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path == "/stats":
            return await handler(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeLLMServer:
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self) -> FakeLLMServer:
        """Serve from a background thread (for code under test that runs its own event loop or a subprocess)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.__aenter__())
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.__aexit__())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-llm-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is not None and self._thread_loop is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(timeout=10)
            self._thread = None
