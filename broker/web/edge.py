"""Slow and greedy clients at the broker's edge: a deadline per request head, a bounded TLS handshake, and
a cap on the connections one client address may hold.

aiohttp (3.14) bounds the size of a request head (`HANDLER_LIMITS` in web.py) but has no timer of its own
for reading one: a client that sends a header byte every few seconds would hold its connection forever.
What it does have is its keep-alive timer, armed when a connection opens and again after each answer and
never pushed back by arriving bytes; when it fires while no complete request head has arrived, aiohttp
closes the connection. Set to `request_timeout`, that timer is exactly the deadline we want (for a head,
and for an idle keep-alive connection), so nothing is reimplemented here: `handler_args` sets it, and
`GuardedSite` adds what `web.TCPSite` cannot, asyncio's `ssl_handshake_timeout` and the per-address cap.
A request's body gets the same deadline in its handler (`web._form_credentials`).

A TLS connection reaches the cap only once its handshake is done (asyncio hands it to aiohttp then), so
handshakes in progress are bounded by time, not by number.
"""

from __future__ import annotations

import asyncio
import logging
from ssl import SSLContext
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from ..shared.caps import ConnectionCap
from ..shared.identifiers import loggable
from .app import HANDLER_LIMITS, AccessLogger

log = logging.getLogger(__name__)


def handler_args(request_timeout: float) -> dict[str, Any]:
    """aiohttp's per-connection settings: parser limits, the access log, and the head deadline."""
    return {**HANDLER_LIMITS, "access_log_class": AccessLogger, "keepalive_timeout": request_timeout}


class _CappedHandler(RequestHandler):
    """aiohttp's handler, admitted by the cap first: a refused connection is closed before aiohttp sees it
    (no answer: nothing has been read, so there is no request to answer)."""

    def __init__(self, cap: ConnectionCap, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._cap = cap
        self._admitted: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._cap.admit(address):
            transport.close()
            return
        self._admitted = address
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted is None:
            return  # refused: aiohttp never knew this connection
        self._cap.release(self._admitted)
        self._admitted = None
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp logs each request its parser refuses as an error with a traceback: anyone could fill the
        log with them. Such a request (already answered 400 or 413) is one line at info level; anything
        else keeps aiohttp's error and traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            log.info("refused a malformed request from %s: %s", self._admitted, loggable(exc.message))
            return
        super().log_exception(*args, **kw)


class GuardedSite(web.BaseSite):
    """`web.TCPSite`, plus a bounded TLS handshake and the per-address connection cap.

    `args` must be what the runner was given (`handler_args`): the site makes aiohttp's handlers itself."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, *, args: dict[str, Any], cap: ConnectionCap,
        request_timeout: float, ssl_context: SSLContext | None = None, backlog: int = 1024,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._args = args
        self._cap = cap
        self._request_timeout = request_timeout
        self._bound_port: int | None = None

    @property
    def name(self) -> str:
        return f"{'http' if self._ssl_context is None else 'https'}://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        return self._bound_port or self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None  # the runner is set up before its sites start

        def handler() -> RequestHandler:
            return _CappedHandler(self._cap, server, loop=loop, **self._args)

        listening = await loop.create_server(
            handler, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=self._request_timeout if self._ssl_context is not None else None,
        )
        self._server = listening
        self._bound_port = int(listening.sockets[0].getsockname()[1])
