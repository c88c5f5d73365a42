"""What the benchmarks that run the broker on loopback share (login_limiter.py, pam_flood.py,
tls_handshakes.py): a configuration with one image, a helper that is never asked to boot anything, a
directory in which every name is its own account with no groups, and the real app behind the real site."""

from __future__ import annotations

from ssl import SSLContext
from typing import Any

from aiohttp import web

from broker.web.boot import BootFlow
from broker.web.gate import Authenticator
from broker.shared.caps import ConnectionCap
from broker.shared.config import Config, parse
from broker.web.edge import GuardedSite, handler_args
from broker.web.limiter import LoginLimiter
from broker.shared.protocol import OpenFile
from broker.web.scripts import ScriptRenderer
from broker.web.tokens import TokenSigner
from broker.web.app import make_app


class NoHelper:
    async def ensure_session(self, image: str, user: str) -> dict[str, Any]:
        raise AssertionError("nobody boots in a login benchmark")

    async def boot_file(self, image: str, version: int, name: str) -> OpenFile:
        raise AssertionError("nobody boots in a login benchmark")

    async def published(self) -> list[str]:
        return ["demo"]

    async def health(self) -> dict[str, Any]:
        return {}


class PlainAccounts:
    def groups_of(self, user: str) -> frozenset[str]:
        return frozenset()

    def canonical(self, user: str) -> str | None:
        return user


def benchmark_config(**broker: Any) -> Config:
    """One image anyone may boot; `broker` adds to (or overrides) the [broker] table's URL."""
    return parse({
        "store": {"path": "/srv/bootbroker"},
        "iscsi": {"domain": "lab.example.org", "date": "2026-11", "portals": ["192.0.2.10:3260"]},
        "broker": {"url": "https://boot.example.org", **broker},
        "images": {"demo": {"description": "Demo disk", "users": ["*"]}},
    }, "benchmark")


async def start_broker(cfg: Config, authenticator: Authenticator,
                       ssl_context: SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """The broker's app (BootFlow with the real limiter, renderer and tokens) on 127.0.0.1, on the site
    `serve` uses; returns the runner to clean up and the port."""
    broker = cfg.broker
    assert broker is not None
    helper = NoHelper()
    flow = BootFlow(cfg, broker, authenticator, helper, PlainAccounts(), ScriptRenderer(),
                    TokenSigner(broker.token_ttl), LoginLimiter(broker.limits))
    args = handler_args(broker.request_timeout)
    runner = web.AppRunner(make_app(flow, helper), **args)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, args=args, cap=ConnectionCap(broker.connections_per_address),
                       request_timeout=broker.request_timeout, ssl_context=ssl_context)
    await site.start()
    return runner, site.port
