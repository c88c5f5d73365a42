"""Stand-ins for the broker's ports in the login benchmarks (login_limiter.py, pam_flood.py): a helper that
is never asked to boot anything and a directory in which every name is its own account with no groups."""

from __future__ import annotations

from typing import Any

from broker.protocol import OpenFile


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
