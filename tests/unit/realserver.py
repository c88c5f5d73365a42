"""The broker app with fake ports, served the way `serve` serves it (GuardedSite, the runner's limits and
head deadline) on 127.0.0.1, for tests that talk to it over raw sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from broker.web.boot import BootFlow
from broker.shared.config import Config
from broker.shared.caps import ConnectionCap
from broker.web.edge import GuardedSite, handler_args
from broker.web.limiter import LoginLimiter
from broker.web.scripts import ScriptRenderer
from broker.web.tokens import TokenSigner
from broker.web.app import make_app

from .webfakes import FakeAuthenticator, FakeDirectory, FakeHelper


@dataclass
class Served:
    port: int
    authenticator: FakeAuthenticator
    helper: FakeHelper
    cap: ConnectionCap


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def served(config: Config, passwords: dict[str, str], groups: dict[str, set[str]] | None = None,
                 signer: TokenSigner | None = None, ssl_context: Any = None,
                 helper: FakeHelper | None = None) -> AsyncIterator[Served]:
    broker = config.broker
    assert broker is not None
    authenticator, helper = FakeAuthenticator(passwords), helper or FakeHelper()
    flow = BootFlow(
        config, broker, authenticator, helper, FakeDirectory(groups or {}), ScriptRenderer(),
        signer or TokenSigner(broker.token_ttl), LoginLimiter(broker.limits),
    )
    args = handler_args(broker.request_timeout)
    runner = web.AppRunner(make_app(flow, helper), **args)
    await runner.setup()
    cap = ConnectionCap(broker.connections_per_address)
    site = GuardedSite(runner, "127.0.0.1", 0, args=args, cap=cap, request_timeout=broker.request_timeout,
                       ssl_context=ssl_context)
    await site.start()
    try:
        yield Served(site.port, authenticator, helper, cap)
    finally:
        await runner.cleanup()
