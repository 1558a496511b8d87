"""What engine.serve checks and adds on every request: the Host header, security headers, one-line logs.

* Host: a page on another site can point its own DNS name at 127.0.0.1 (DNS
  rebinding) and then read the run through the browser. A request is answered
  only when its Host names this server: the bound address, localhost /
  127.0.0.1 / ::1, a name given with --allow-host, and, when bound to every
  interface (0.0.0.0, ::), this machine's name or any IP address (a rebinding
  page always sends its own DNS name). Anything else gets 403.
* Every response carries a Content-Security-Policy (scripts, styles and
  requests only from this server, no frames, no plugins) and
  `X-Content-Type-Options: nosniff`.
* A bad request (malformed HTTP, a bad parameter, a refused Host) is one log
  line on stderr, never a traceback.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys

from aiohttp import web

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD = frozenset({"", "0.0.0.0", "::"})
log = logging.getLogger("engine.serve")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


class HostCheck:
    """Which Host headers a server bound to `bind` answers."""

    def __init__(self, bind: str, allow: tuple[str, ...] = ()):
        self.wildcard = bind in WILDCARD
        self.names = set(LOOPBACK) | {host_name(bind)} | {host_name(a) for a in allow}
        if self.wildcard:
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def allows(self, header: str | None) -> bool:
        if not header:
            return False
        name = host_name(header)
        if name in self.names:
            return True
        if self.wildcard:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False


def middleware(check: HostCheck):
    @web.middleware
    async def guard(request: web.Request, handler):
        if not check.allows(request.headers.get("Host")):
            log.warning("403 %s %s -- Host %r is not this server's name", request.method, request.path_qs[:200],
                        (request.headers.get("Host") or "")[:100])
            raise web.HTTPForbidden(text="this server answers only requests addressed to its own name "
                                         "(see engine.serve --allow-host)")
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status >= 400:
                log.warning("%d %s %s -- %s", e.status, request.method, request.path_qs[:200], " ".join((e.text or e.reason).split())[:200])
            raise

    return guard


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(HEADERS)


class _OneLine(logging.Filter):
    """aiohttp logs malformed requests with a traceback: keep the exception's type and first words."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            e = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


class _Stderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        print(f"engine.serve: {self.format(record)}", file=sys.stderr, flush=True)


def install_logging() -> None:
    """One line on stderr per bad request, for our log and aiohttp's (idempotent)."""
    for name in ("engine.serve", "aiohttp.server", "aiohttp.web"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in lg.filters):
            lg.addFilter(_OneLine())
        if not any(isinstance(h, _Stderr) for h in lg.handlers):
            lg.addHandler(_Stderr())
        lg.propagate = False
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)
