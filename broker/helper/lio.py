"""Linux LIO through rtslib-fb: the only module that imports rtslib_fb.

One target per overlay (`<prefix>:<image>.<label>`), TPG 1 with authentication on and no generated ACLs,
LUN 0 on the overlay's backstore, one NodeACL per live boot session with one-way CHAP (and at most one
fence: the previous session's NodeACL again, mapping no LUN; see `fence`). Every lookup goes
straight to the object's configfs path, so a login costs the same with 10 targets or 5,000; whole-tree
walks happen only in `inventory`, which reconcile calls once at start.
Callers serialise changes; each method either completes or removes what it created before re-raising.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar

from rtslib_fb import (
    LUN,
    TPG,
    BlockStorageObject,
    FabricModule,
    FileIOStorageObject,
    MappedLUN,
    NetworkPortal,
    NodeACL,
    Target,
)
from rtslib_fb.node import CFSNode
from rtslib_fb.utils import RTSLibError, RTSLibNotInCFSError

from ..shared.config import Portal
from ..shared.errors import BackendFailure
from ..shared.identifiers import STORAGE_OBJECT_PREFIX
from .backstores import BackstoreNumbers
from .faults import crash_point

TPG_TAG = 1
LUN_INDEX = 0
# Every TPG of ours: CHAP on, no ACLs made for unknown initiators, and SendTargets discovery answering an
# initiator only with the targets it has a NodeACL on (the kernel's default lists every target, and the
# targets' names name users); the two demo-mode settings are the safe ones should demo mode ever be on.
TPG_ATTRIBUTES = {
    "authentication": "1",
    "generate_node_acls": "0",
    "demo_mode_discovery": "0",
    "demo_mode_write_protect": "1",
    "cache_dynamic_acls": "0",
}
CONFIGFS_TARGET = Path("/sys/kernel/config/target")
T = TypeVar("T")
# Each backstore type: its storage object class and its HBA directories' prefix in configfs.
_KINDS: dict[str, tuple[Any, str]] = {"fileio": (FileIOStorageObject, "fileio"), "block": (BlockStorageObject, "iblock")}


class FileioCache(Enum):
    """How LIO writes a fileio backstore's file. A block backstore has no such choice: LIO reports its
    device's own cache (a loop or device-mapper device over a file: a write cache, flushed on request)."""

    #: the file opened O_DSYNC: every write is on disk when it completes; no write cache reported
    WRITE_THROUGH = "write-through"
    #: the kernel's asynchronous I/O (fd_async_io): direct I/O that ignores O_DSYNC (only FUA writes are
    #: synced) while no write cache is reported, so the initiator never flushes: a write into a clone's shared
    #: or new extent completes before the file's metadata that maps it is on disk. Measured, never used.
    DIRECT_AIO = "direct-aio"
    #: buffered in the page cache, a write cache reported to the initiator (WCE): its flushes
    #: (SYNCHRONIZE CACHE) and FUA writes are synced to the file before they complete
    WRITE_BACK = "write-back"

    def options(self) -> dict[str, bool]:
        """rtslib-fb's FileIOStorageObject arguments."""
        return {"write_back": self is FileioCache.WRITE_BACK, "aio": self is FileioCache.DIRECT_AIO}


@dataclass(frozen=True)
class Inventory:
    """What LIO holds of ours: target IQNs (with their ACL initiators) and storage object names."""

    acls: dict[str, set[str]]
    storage_objects: dict[str, Literal["fileio", "block"]]


def _lookup_or_create(lookup: Callable[[], T], create: Callable[[], T], created: list[Any]) -> T:
    try:
        return lookup()
    except RTSLibNotInCFSError:
        obj = create()
        created.append(obj)
        return obj


def _acl_with_chap(tpg: Any, initiator: str, chap_user: str, chap_secret: str, created: list[Any]) -> Any:
    """The initiator's NodeACL on the TPG (made if missing, and then listed in `created`), with these CHAP
    credentials."""
    acl = _lookup_or_create(
        lambda: NodeACL(tpg, initiator, "lookup"), lambda: NodeACL(tpg, initiator, "create"), created
    )
    acl.chap_userid = chap_user
    acl.chap_password = chap_secret
    return acl


def _rolled_back(created: list[Any]) -> None:
    for obj in reversed(created):
        try:
            obj.delete()
        except (RTSLibError, OSError):
            pass  # the original error is what the caller needs; a leftover is repaired by reconcile


class Lio:
    def __init__(self, portals: Iterable[Portal], fileio_cache: FileioCache = FileioCache.WRITE_BACK) -> None:
        self.portals = tuple(portals)
        self.fileio_cache = fileio_cache
        self._fabric: Any = None
        self.numbers = BackstoreNumbers(CONFIGFS_TARGET / "core")

    def _iscsi(self) -> Any:
        if self._fabric is None:
            self._fabric = FabricModule("iscsi")
        return self._fabric

    def forget(self) -> None:
        """Drop what this process remembers of LIO (the fabric, rtslib's backstore numbering): after LIO was
        emptied under the running helper (`targetctl clear`, target.service restarted) it is all stale."""
        self._fabric = None
        self.numbers.forget()

    def check(self) -> None:
        """Fail clearly when the kernel has no LIO iSCSI target; `/etc/target` must exist for rtslib."""
        if not CONFIGFS_TARGET.is_dir():
            raise BackendFailure(
                f"{CONFIGFS_TARGET} is missing: mount configfs and load target_core_mod and iscsi_target_mod"
            )
        os.makedirs("/etc/target", exist_ok=True)
        try:
            self._iscsi()._check_self()
        except RTSLibError as e:
            raise BackendFailure(f"the LIO iSCSI fabric is not available: {e}") from None

    def _storage_object(self, name: str, backstore: Literal["fileio", "block"]) -> Any:
        """The storage object `name` (RTSLibNotInCFSError if there is none), found by its backstore's number."""
        cls, kind = _KINDS[backstore]
        number = self.numbers.of(kind, name)
        if number is None:
            raise RTSLibNotInCFSError(f"no storage object {name}")
        try:
            return cls(name, index=number)
        except RTSLibNotInCFSError:
            self.numbers.release(kind, name)  # removed behind our back
            raise

    def _new_storage_object(self, name: str, backstore: Literal["fileio", "block"], device: Path) -> Any:
        """Make the storage object `name` on `device` in a backstore numbered by us. A number another program
        took meanwhile ("already exists in configFS": targetcli, a site's own tooling, or an HBA directory it
        left empty) makes us read configfs again and take the next free one, once."""
        cls, kind = _KINDS[backstore]
        extra = {"size": device.stat().st_size, **self.fileio_cache.options()} if backstore == "fileio" else {}

        def made() -> Any:
            try:
                return cls(name, dev=str(device), index=self.numbers.take(kind, name), **extra)
            except RTSLibError:
                self.numbers.release(kind, name)
                raise

        try:
            return made()
        except RTSLibError as e:
            if "already exists" not in str(e):
                raise
        self.numbers.forget()
        return made()

    def ensure_target(self, iqn: str, so_name: str, backstore: Literal["fileio", "block"], device: Path) -> None:
        """Ensure the storage object, target, TPG (auth on), portals and LUN 0 exist. Idempotent."""
        created: list[Any] = []
        try:
            so = _lookup_or_create(
                lambda: self._storage_object(so_name, backstore),
                lambda: self._new_storage_object(so_name, backstore, device),
                created,
            )
            crash_point("storage-object-created")
            target = _lookup_or_create(
                lambda: Target(self._iscsi(), iqn, "lookup"), lambda: Target(self._iscsi(), iqn, "create"), created
            )
            tpg = _lookup_or_create(lambda: TPG(target, TPG_TAG, "lookup"), lambda: TPG(target, TPG_TAG, "create"), created)
            self._enforce_attributes(tpg)
            for portal in self.portals:
                NetworkPortal(tpg, portal.host, portal.port, "any")
            _lookup_or_create(lambda: LUN(tpg, LUN_INDEX), lambda: LUN(tpg, LUN_INDEX, storage_object=so), created)
            if not tpg.enable:
                tpg.enable = True
        except (RTSLibError, OSError) as e:
            _rolled_back(created)
            raise BackendFailure(f"LIO refused target {iqn}: {e}") from None

    @staticmethod
    def _enforce_attributes(tpg: Any) -> None:
        for name, value in TPG_ATTRIBUTES.items():
            if tpg.get_attribute(name) != value:
                tpg.set_attribute(name, value)

    def enforce_attributes(self, iqn: str) -> None:
        """Give an existing target's TPG the attributes every target of ours has (`TPG_ATTRIBUTES`): a target
        made by an older version, or changed by hand, must not list itself to strangers. Idempotent."""
        try:
            self._enforce_attributes(self._tpg(iqn))
        except RTSLibNotInCFSError:
            pass
        except (RTSLibError, OSError) as e:
            raise BackendFailure(f"LIO refused the attributes of {iqn}: {e}") from None

    def _tpg(self, iqn: str) -> Any:
        return TPG(Target(self._iscsi(), iqn, "lookup"), TPG_TAG, "lookup")

    def replace_acls(self, iqn: str, initiator: str, chap_user: str, chap_secret: str) -> None:
        """Delete every NodeACL of the target but `initiator`'s (the kernel drops those sessions at once: one
        writer per disk), whether or not a record knew it, then ensure `initiator`'s with these credentials.
        Lists only this target's ACLs (one configfs directory), never the whole tree."""
        try:
            tpg = self._tpg(iqn)
            for other in self.acls(iqn) - {initiator}:
                self._delete_acl(tpg, other)
        except (RTSLibError, OSError) as e:
            raise BackendFailure(f"LIO refused to drop the previous session on {iqn}: {e}") from None
        self.ensure_acl(iqn, initiator, chap_user, chap_secret)

    @staticmethod
    def acls(iqn: str) -> set[str]:
        """The initiators that have a NodeACL on the target (none when there is no such target)."""
        try:
            return {entry.name for entry in os.scandir(_acl_dir(iqn)) if entry.is_dir()}
        except FileNotFoundError:
            return set()

    @staticmethod
    def serves(iqn: str, initiator: str) -> bool:
        """Whether LIO has the initiator's NodeACL with LUN 0 mapped: one stat, cheap enough to ask for
        every live session. (A mapped LUN goes with the target's LUN and its storage object; an ACL left
        without one shows the initiator LIO's empty virtual LUN 0, so the ACL alone proves nothing.)"""
        return (_acl_dir(iqn) / initiator / f"lun_{LUN_INDEX}").is_dir()

    def ensure_acl(self, iqn: str, initiator: str, chap_user: str, chap_secret: str) -> None:
        """Ensure a NodeACL for `initiator` with these CHAP credentials and LUN 0 mapped. Idempotent."""
        created: list[Any] = []
        try:
            tpg = self._tpg(iqn)
            acl = _acl_with_chap(tpg, initiator, chap_user, chap_secret, created)
            _lookup_or_create(
                lambda: MappedLUN(acl, LUN_INDEX),
                lambda: MappedLUN(acl, LUN_INDEX, tpg_lun=LUN(tpg, LUN_INDEX), write_protect=False),
                created,
            )
        except (RTSLibError, OSError) as e:
            _rolled_back(created)
            raise BackendFailure(f"LIO refused a NodeACL on {iqn}: {e}") from None

    def fence(self, iqn: str, initiator: str, chap_user: str, chap_secret: str) -> None:
        """Give an initiator whose session was just dropped a NodeACL with its old CHAP credentials that maps
        no LUN. Its OS logs in again and finds only LIO's virtual LUN 0 (32 KiB of nothing, write-protected):
        it can neither read nor write the disk, and it stops retrying. A refused login instead is retried by
        open-iscsi every few seconds for as long as the machine runs, each attempt a line in the kernel's
        log. The next login on the target removes it with every other ACL. Idempotent."""
        created: list[Any] = []
        try:
            acl = _acl_with_chap(self._tpg(iqn), initiator, chap_user, chap_secret, created)
            for mapped in list(acl.mapped_luns):  # never a fence that grants the disk
                mapped.delete()
        except (RTSLibError, OSError) as e:
            _rolled_back(created)
            raise BackendFailure(f"LIO refused a fence NodeACL on {iqn}: {e}") from None

    @staticmethod
    def _delete_acl(tpg: Any, initiator: str) -> None:
        try:
            NodeACL(tpg, initiator, "lookup").delete()
        except RTSLibNotInCFSError:
            pass

    def delete_acl(self, iqn: str, initiator: str) -> None:
        """Remove one NodeACL; absent target or ACL is not an error. Idempotent."""
        try:
            self._delete_acl(self._tpg(iqn), initiator)
        except RTSLibNotInCFSError:
            pass
        except (RTSLibError, OSError) as e:
            raise BackendFailure(f"LIO refused to delete an ACL of {iqn}: {e}") from None

    def delete_target(self, iqn: str, so_name: str, backstore: Literal["fileio", "block"]) -> None:
        """Remove the target (its TPG, ACLs, LUN, portals) and its storage object. Idempotent."""
        try:
            try:
                Target(self._iscsi(), iqn, "lookup").delete()
            except RTSLibNotInCFSError:
                pass
            try:
                so = self._storage_object(so_name, backstore)
            except RTSLibNotInCFSError:
                return
            # StorageObject.delete() first scans every target's LUNs for links to the object, a
            # whole-tree walk that made a reset cost 11x more at 400 targets than at 10. The only LUN
            # that used it went with the target above, so remove the object and its HBA directly.
            CFSNode.delete(so)
            so._backstore.delete()
            self.numbers.release(_KINDS[backstore][1], so_name)
        except (RTSLibError, OSError) as e:
            raise BackendFailure(f"LIO refused to delete target {iqn}: {e}") from None

    def logged_in(self, iqn: str, initiator: str) -> bool:
        try:
            return NodeACL(self._tpg(iqn), initiator, "lookup").session is not None
        except RTSLibNotInCFSError:
            return False

    def inventory(self, prefix: str) -> Inventory:
        """Every target under `prefix` with its ACLs, and every storage object named `<prefix-free>`."""
        acls: dict[str, set[str]] = {}
        fabric = CONFIGFS_TARGET / "iscsi"
        if fabric.is_dir():
            for target_dir in fabric.iterdir():
                if target_dir.name.startswith(prefix + ":"):
                    acls[target_dir.name] = self.acls(target_dir.name)
        objects: dict[str, Literal["fileio", "block"]] = {}
        for hba in (CONFIGFS_TARGET / "core").glob("*_*"):
            kind: Literal["fileio", "block"] | None = (
                "fileio" if hba.name.startswith("fileio_") else "block" if hba.name.startswith("iblock_") else None
            )
            if kind is not None:
                for so in hba.iterdir():
                    if so.is_dir() and so.name.startswith(STORAGE_OBJECT_PREFIX):
                        objects[so.name] = kind
        return Inventory(acls, objects)


def _acl_dir(iqn: str) -> Path:
    return CONFIGFS_TARGET / "iscsi" / iqn / f"tpgt_{TPG_TAG}" / "acls"
