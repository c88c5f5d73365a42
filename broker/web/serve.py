"""`bootbroker serve`: wire the broker together from the configuration and run it.

The composition root: the real PAM authenticator, the helper client (synchronous, called from worker
threads), NSS for account names and groups, the certificate (generated on first start) and the listening sockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from ..shared.access import NssDirectory
from ..shared.caps import ConnectionCap
from ..shared.config import BrokerConfig, Config
from ..shared.errors import BadRequest, InternalError, UnsupportedVersion
from ..shared.helper_client import HelperClient
from ..shared.protocol import OpenFile
from .app import make_app
from .boot import BootFlow
from .edge import GuardedSite, handler_args
from .limiter import LoginLimiter
from .metrics import Metrics
from .pam_auth import PamAuthenticator
from .scripts import ScriptRenderer
from .tls import describe, ensure_certificate, server_context
from .tokens import TokenSigner

log = logging.getLogger(__name__)

HELPER_TIMEOUT = 60.0  # a cold login under a boot storm waits for the helper's lock


class ThreadedHelper:
    """The helper, reached through its synchronous client from a pool of threads (one call each)."""

    def __init__(self, client: HelperClient, concurrency: int = 16) -> None:
        self._client = client
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="helper")

    async def _call(self, op: str, **args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: self._client.call(op, **args))
        except (BadRequest, UnsupportedVersion) as e:
            # The helper refused what the broker sent (a bug, or a helper of another version): not the
            # workstation's fault, so not a message for its screen. The detail stays in the log.
            raise InternalError(f"the helper refused the broker's {op}: {e.code.value}: {e.message}") from None

    async def ensure_session(self, image: str, user: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("ensure_session", image=image, user=user)
        return result

    async def published(self) -> list[str]:
        result: list[str] = await self._call("published")
        return result

    async def boot_file(self, image: str, version: int, name: str) -> OpenFile:
        """A version's kernel or initrd, as the descriptor the helper sends (the caller closes it)."""
        opened = asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self._client.call_for_file("boot_file", image=image, version=version, name=name))
        try:
            return await asyncio.shield(opened)
        except asyncio.CancelledError:
            # The workstation went away while the helper answered: the descriptor still arrives; close it then.
            opened.add_done_callback(_close_when_opened)
            raise
        except (BadRequest, UnsupportedVersion) as e:
            raise InternalError(f"the helper refused the broker's boot_file: {e.code.value}: {e.message}") from None

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("health")
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _close_when_opened(done: asyncio.Future[OpenFile]) -> None:
    if not done.cancelled() and done.exception() is None:
        os.close(done.result().fd)


def build_app(config: Config, broker: BrokerConfig) -> web.Application:
    metrics = Metrics()
    authenticator = PamAuthenticator(broker.pam_service, broker.pam_concurrency, observe=metrics.pam_conversation)
    helper = ThreadedHelper(HelperClient(config.helper.socket, timeout=HELPER_TIMEOUT))
    flow = BootFlow(
        config, broker, authenticator, helper, NssDirectory(), ScriptRenderer(broker.templates),
        TokenSigner(broker.token_ttl), LoginLimiter(broker.limits), metrics=metrics,
    )
    app = make_app(flow, helper)

    async def close_pools(app: web.Application) -> Any:
        yield
        authenticator.close()
        helper.close()

    app.cleanup_ctx.append(close_pools)
    return app


async def run(config: Config, broker: BrokerConfig) -> None:
    if broker.insecure_http:
        ssl_context = None
        log.warning(
            "INSECURE: insecure_http is on; serving plain HTTP. Passwords and CHAP secrets cross the network "
            "in clear text. This switch exists for the VM lab only."
        )
    else:
        certificate = ensure_certificate(broker.certificate, broker.key, broker.names, broker.key_type)  # logs when it generates
        print(describe(certificate), file=sys.stderr)
        ssl_context = server_context(certificate)
    args = handler_args(broker.request_timeout)
    runner = web.AppRunner(build_app(config, broker), **args)
    await runner.setup()
    cap = ConnectionCap(broker.connections_per_address)  # one for all sites: an address is one client
    try:
        for listen in broker.listen:
            site = GuardedSite(
                runner, listen.host, listen.port, args=args, cap=cap, request_timeout=broker.request_timeout,
                ssl_context=ssl_context,
            )
            await site.start()
            log.info("listening on %s:%d (%s)", listen.host, listen.port, "http" if ssl_context is None else "https")
        log.info("broker ready at %s (helper socket %s)", broker.url, config.helper.socket)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
