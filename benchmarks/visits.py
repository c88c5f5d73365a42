"""Workstations as the benchmark plays them: log in (PAM) and follow the menu's boot link, over HTTPS as
iPXE speaks it. Used from the host (lab/bench.py: one login at a time) and inside the lab VM
(benchmarks/inside.py's storm: hundreds at once; through qemu's user-mode port forward a storm measures
the forward, not the broker: 144 of 500 TLS handshakes through it did not complete within 60 s)."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from broker.web.tls import CIPHERS

BOOT_LINK = re.compile(r"https://\S+?(/boot/[a-z0-9-]+\.ipxe\?token=\S+)")


@dataclass
class Visit:
    """One user's login and boot as the client saw it: seconds from the login request to the whole script."""

    user: str
    status: int  # the boot script's, or the failed request's; 0 when the connection failed
    seconds: float
    login_seconds: float
    script: str

    @property
    def served(self) -> bool:
        return self.status == 200 and "sanboot iscsi:" in self.script


class Client:
    """HTTPS to the broker at `base`, as iPXE speaks it, verifying the broker's certificate (`cafile`)."""

    def __init__(self, base: str, cafile: str, server_hostname: str) -> None:
        self.base = base
        self.server_hostname = server_hostname
        self.ssl = ssl.create_default_context(cafile=cafile)
        # A workstation's handshake: iPXE has no TLS 1.3 (whose handshake costs the server more) and
        # offers the suites broker/web/tls.py lists.
        self.ssl.maximum_version = ssl.TLSVersion.TLSv1_2
        self.ssl.set_ciphers(CIPHERS)

    async def _get(self, session: aiohttp.ClientSession, path: str, **options: Any) -> tuple[int, str]:
        async with session.get(self.base + path, ssl=self.ssl, server_hostname=self.server_hostname,
                               **options) as answer:
            return answer.status, await answer.text()

    async def visit(self, user: str, password: str) -> Visit:
        """Log in and follow the menu's first boot link, on one connection (a workstation's session)."""
        started = time.perf_counter()
        login_seconds = 0.0
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:
                status, text = await self._get(session, "/login.ipxe", auth=aiohttp.BasicAuth(user, password))
                login_seconds = time.perf_counter() - started
                link = BOOT_LINK.search(text)
                if status == 200 and link is not None:
                    status, text = await self._get(session, link[1])
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            status, text = 0, f"{type(e).__name__}: {e}"
        return Visit(user, status, time.perf_counter() - started, login_seconds, text)

    async def metrics(self) -> dict[str, float]:
        async with aiohttp.ClientSession() as session:
            _, text = await self._get(session, "/metrics")
        return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+) (\S+)$", text, re.MULTILINE)
                if not m[1].startswith("#")}


async def one_by_one(client: Client, users: list[str], password: str) -> list[Visit]:
    return [await client.visit(user, password) for user in users]


async def all_at_once(client: Client, users: list[str], password: str) -> list[Visit]:
    return list(await asyncio.gather(*(client.visit(user, password) for user in users)))


def failures(visits: list[Visit]) -> list[str]:
    """The distinct ways visits failed, each with how many and when (seconds after the start)."""
    by_kind: dict[str, list[float]] = {}
    for v in visits:
        by_kind.setdefault(f"{v.status} {v.script[:160]}", []).append(v.seconds)
    return [f"{len(t)}x after {min(t):.1f}-{max(t):.1f} s: {kind}" for kind, t in sorted(by_kind.items())]
