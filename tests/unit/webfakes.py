"""Test fakes for the broker's ports, one per failure mode the web layer must handle (after matchbox's
testfakes): an authenticator with a fixed table, a helper that works, is down, is slow, errs, or answers
garbage, and a directory of accounts and groups."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from broker.shared.config import Config, parse
from broker.shared.errors import BrokerError, HelperUnavailable, UnknownImage
from broker.shared.protocol import OpenFile

CHAP_SECRET = "S3cretS3cretS3cret42"


def broker_config(images: dict[str, Any] | None = None, **broker: Any) -> Config:
    return parse({
        "store": {"path": "/srv/bootbroker"},
        "iscsi": {"domain": "lab.example.org", "date": "2026-11", "portals": ["192.0.2.10:3260"]},
        "broker": {
            "url": "https://boot.example.org",
            "limits": {"failure_delay": 0.05, "user_failures": 3, "address_failures": 10, "window": 60},
            **broker,
        },
        "images": images or {
            "demo": {"description": "Demo disk", "users": ["*"]},
            "staff": {"description": "Staff desktop", "groups": ["staff"]},
            "linux": {
                "description": "Fedora via netroot", "users": ["alice"], "boot": "netroot",
                "kernel": "https://boot.example.org/f/vmlinuz", "initrd": "https://boot.example.org/f/initrd.img",
                "cmdline": "ip=dhcp rw quiet",
            },
        },
    }, "test.toml")


class FakeAuthenticator:
    """A fixed table of passwords; `case_sensitive=False` matches names as pam_sss can (any case)."""

    def __init__(self, passwords: dict[str, str], case_sensitive: bool = True) -> None:
        self.passwords = passwords if case_sensitive else {u.casefold(): p for u, p in passwords.items()}
        self.case_sensitive = case_sensitive
        self.calls: list[str] = []

    async def authenticate(self, user: str, password: str) -> bool:
        self.calls.append(user)
        return self.passwords.get(user if self.case_sensitive else user.casefold()) == password


class FakeDirectory:
    """Groups per user; `accounts`, when given, are the names NSS knows, found whatever the case asked
    (as sssd's case_sensitive = false); without them every name is known as it is typed."""

    def __init__(self, groups: dict[str, set[str]], accounts: Iterable[str] | None = None) -> None:
        self.groups = groups
        self.accounts = None if accounts is None else {name.casefold(): name for name in accounts}
        self.asked: list[str] = []  # whose groups were looked up, in order
        self.named: list[str] = []  # whose canonical names were looked up, in order

    def groups_of(self, user: str) -> frozenset[str]:
        self.asked.append(user)
        return frozenset(self.groups.get(user, set()))

    def canonical(self, user: str) -> str | None:
        self.named.append(user)
        return user if self.accounts is None else self.accounts.get(user.casefold())


class FakeHelper:
    """A helper that grants sessions; `mode` makes it fail: "down", "slow", "store_full", "garbage".
    `boot_files` are the versions' own kernels and initrds, (image, version, name) -> content; sessions are
    on `version`."""

    def __init__(self, mode: str = "ok", error: BrokerError | None = None,
                 images: tuple[str, ...] = ("demo", "linux", "staff"),
                 boot_files: dict[tuple[str, int, str], bytes] | None = None, version: int = 1) -> None:
        self.mode = mode
        self.error = error
        self.images = images  # those with a published version
        self.sessions: list[tuple[str, str]] = []
        self.boot_files = boot_files or {}
        self.version = version
        self.files_asked: list[tuple[str, int, str]] = []
        self.open_files: list[int] = []  # descriptors handed out, to check the broker closes them

    async def ensure_session(self, image: str, user: str) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        if self.mode == "slow":
            await asyncio.sleep(0.2)
        if self.mode == "garbage":
            return {"target_iqn": "iqn.2026-11.org.example.lab:demo.x\n#!ipxe shell", "lun": 0}
        self.sessions.append((image, user))
        label = user.lower()
        return {
            "target_iqn": f"iqn.2026-11.org.example.lab:{image}.{label}",
            "lun": 0,
            "portals": ["192.0.2.10:3260"],
            "initiator_iqn": f"iqn.2026-11.org.example.lab:client.{image}.{label}.0a1b2c3d",
            "chap_user": label,
            "chap_secret": CHAP_SECRET,
            "version": self.version,
            "boot_files": all((image, self.version, name) in self.boot_files for name in ("vmlinuz", "initrd.img")),
        }

    async def boot_file(self, image: str, version: int, name: str) -> OpenFile:
        self.files_asked.append((image, version, name))
        if self.error is not None:
            raise self.error
        content = self.boot_files.get((image, version, name))
        if content is None:
            raise UnknownImage(f"{image} v{version} has no {name} of its own")
        fd = os.memfd_create(name)  # a regular file, as the helper's are
        os.write(fd, content)
        os.lseek(fd, 0, os.SEEK_SET)
        self.open_files.append(fd)
        return OpenFile(fd, len(content))

    async def published(self) -> list[str]:
        if isinstance(self.error, HelperUnavailable):  # other errors are ensure_session's
            raise self.error
        return list(self.images)

    async def health(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return {"backend": "reflink", "sessions": len(self.sessions), "store_free_bytes": 1 << 30}


DOWN = HelperUnavailable("no helper socket at /run/bootbroker/helper.sock; is `bootbroker helper` running?")
