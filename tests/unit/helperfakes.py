"""Test fakes for the helper's ports, so its use cases (broker/helper/) can be tested without a kernel: an
in-memory LIO that can be told to fail at any one method, and a backend that copies files. The lab tests
(tests/lab/test_helper.py) prove the real LIO and backends; these prove the helper's decisions."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from broker.shared.config import BackendKind, Config, parse
from broker.shared.errors import BackendFailure
from broker.helper.operations import Helper
from broker.helper.lio import Inventory


@dataclass
class FakeTarget:
    storage_object: str
    acls: dict[str, tuple[str, str]] = field(default_factory=dict)  # initiator -> (chap user, secret)
    fences: set[str] = field(default_factory=set)  # the initiators of `acls` that map no LUN
    attributes: dict[str, str] = field(default_factory=dict)


class FakeLio:
    """Targets and NodeACLs in a dict. `fail` names methods that raise BackendFailure (once each unless
    `fail_always`); `logged_in_initiators` are the ACLs with a live iSCSI session."""

    TPG_ATTRIBUTES = {"authentication": "1", "generate_node_acls": "0", "demo_mode_discovery": "0"}

    def __init__(self) -> None:
        self.targets: dict[str, FakeTarget] = {}
        self.fail: set[str] = set()
        self.fail_always = False
        self.logged_in_initiators: set[str] = set()
        self.calls: list[str] = []

    def _maybe_fail(self, method: str) -> None:
        self.calls.append(method)
        if method in self.fail:
            if not self.fail_always:
                self.fail.discard(method)
            raise BackendFailure(f"LIO refused ({method}, injected)")

    def check(self) -> None:
        self._maybe_fail("check")

    def ensure_target(self, iqn: str, so_name: str, backstore: Literal["fileio", "block"], device: Path) -> None:
        self._maybe_fail("ensure_target")
        target = self.targets.setdefault(iqn, FakeTarget(so_name))
        target.attributes.update(self.TPG_ATTRIBUTES)

    def replace_acls(self, iqn: str, initiator: str, chap_user: str, chap_secret: str) -> None:
        self._maybe_fail("replace_acls")
        for other in list(self.targets[iqn].acls):
            if other != initiator:
                self._maybe_fail("delete_acl")
                del self.targets[iqn].acls[other]
                self.targets[iqn].fences.discard(other)
        self.ensure_acl(iqn, initiator, chap_user, chap_secret)

    def ensure_acl(self, iqn: str, initiator: str, chap_user: str, chap_secret: str) -> None:
        self._maybe_fail("ensure_acl")
        self.targets[iqn].acls[initiator] = (chap_user, chap_secret)
        self.targets[iqn].fences.discard(initiator)

    def fence(self, iqn: str, initiator: str, chap_user: str, chap_secret: str) -> None:
        self._maybe_fail("fence")
        self.targets[iqn].acls[initiator] = (chap_user, chap_secret)
        self.targets[iqn].fences.add(initiator)

    def acls(self, iqn: str) -> set[str]:
        self._maybe_fail("acls")
        target = self.targets.get(iqn)
        return set(target.acls) if target else set()

    def delete_acl(self, iqn: str, initiator: str) -> None:
        self._maybe_fail("delete_acl")
        if iqn in self.targets:
            self.targets[iqn].acls.pop(initiator, None)
            self.targets[iqn].fences.discard(initiator)

    def delete_target(self, iqn: str, so_name: str, backstore: Literal["fileio", "block"]) -> None:
        self._maybe_fail("delete_target")
        self.targets.pop(iqn, None)

    def enforce_attributes(self, iqn: str) -> None:
        self._maybe_fail("enforce_attributes")
        if iqn in self.targets:
            self.targets[iqn].attributes.update(self.TPG_ATTRIBUTES)

    def forget(self) -> None:
        self.calls.append("forget")

    def logged_in(self, iqn: str, initiator: str) -> bool:
        return iqn in self.targets and initiator in self.targets[iqn].acls and initiator in self.logged_in_initiators

    def serves(self, iqn: str, initiator: str) -> bool:
        return iqn in self.targets and initiator in self.targets[iqn].acls and initiator not in self.targets[iqn].fences

    def inventory(self, prefix: str) -> Inventory:
        return Inventory(
            {iqn: set(t.acls) for iqn, t in self.targets.items() if iqn.startswith(prefix + ":")},
            {t.storage_object: "fileio" for t in self.targets.values()},
        )


class CopyBackend:
    """An overlay is a plain copy of its golden version (disk.img), exported as a file."""

    kind = BackendKind.REFLINK
    backstore: Literal["fileio", "block"] = "fileio"
    fill_advice = "it is a test"

    def __init__(self) -> None:
        self.discarded: list[str] = []  # the overlay directories' names, in order
        self.pool: tuple[str, int, int] | None = None  # what `room` answers

    def probe(self, scratch: Path) -> None:
        pass

    def create(self, golden: Path, work: Path) -> None:
        shutil.copyfile(golden, work / "disk.img")

    def attach(self, golden: Path, overlay: Path, name: str) -> Path:
        return overlay / "disk.img"

    def detach(self, overlay: Path, name: str) -> None:
        pass

    def discard(self, overlay: Path) -> None:
        self.discarded.append(overlay.name)

    def used_bytes(self, overlay: Path) -> int:
        return (overlay / "disk.img").stat().st_size

    def materialize(self, golden: Path, overlay: Path, name: str, destination: Path) -> None:
        shutil.copyfile(overlay / "disk.img", destination)

    def fill_percent(self, name: str) -> float | None:
        return None

    def room(self) -> tuple[str, int, int] | None:
        return self.pool


class OpenDirectory:
    def groups_of(self, user: str) -> frozenset[str]:
        return frozenset()


def helper_config(store: Path, **images: dict[str, Any]) -> Config:
    return parse({
        "store": {"path": str(store), "min_free_percent": 0},
        "helper": {"socket": str(store.parent / "run" / "helper.sock")},
        "iscsi": {"domain": "lab.example.org", "date": "2026-11", "portals": ["192.0.2.10:3260"]},
        "images": images or {"demo": {"description": "Demo disk", "users": ["*"]}},
    }, "test.toml")


def make_helper(store: Path, lio: FakeLio | None = None, **images: dict[str, Any]) -> Helper:
    store.mkdir(mode=0o755, exist_ok=True)
    return Helper(helper_config(store, **images), CopyBackend(), lio or FakeLio(), OpenDirectory())  # type: ignore[arg-type]

