"""The helper's operations: every root-only change, on validated identifiers, under one lock.

`Helper` is the use-case layer of the privileged daemon: it derives every path and name itself, keeps the
three sources of truth in step (overlays on disk, targets in LIO, live sessions in the session records), and
repairs half-done work at start (`reconcile`). The socket server in `helper_server` decides who may call
what; this module trusts its caller and checks only the arguments.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import Backend
from .config import Config
from .errors import BadIdentifier, BackendFailure, NoSuchOverlay, NoSuchSession, UnknownImage
from .identifiers import check_image_name, check_user_name, new_chap_secret, user_label
from .lio import Lio, storage_object_name
from .state import BootSession, SessionBook
from .store import OverlayMeta, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Names:
    """Everything derived from one (image, user) pair."""

    image: str
    user: str
    label: str
    target: str
    storage_object: str


class Helper:
    def __init__(self, config: Config, backend: Backend, lio: Lio) -> None:
        self.config = config
        self.store = Store(config.store.path)
        self.backend = backend
        self.lio = lio
        self.book = SessionBook(config.store.sessions_dir)
        self._lock = threading.Lock()

    # start-up

    def start(self) -> None:
        """Prove the store, backend and LIO work, then reconcile. Raises BrokerError saying what to fix."""
        try:
            self.store.prepare()
        except OSError as e:
            raise BackendFailure(str(e)) from None
        self.backend.probe(self.store.tmp)
        self.lio.check()
        with self._lock:
            self.book.load()
            self._reconcile()

    def _reconcile(self) -> None:
        """Make LIO and the session records agree with the overlays on disk, repairing half-done work."""
        for leftover in self.store.tmp.glob("overlay-*"):
            log.warning("reconcile: removing half-made overlay %s", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)
        live: dict[str, str] = {}  # target IQN -> initiator of its live session
        for session in self.book.all():
            names = self._names(session.image, session.user)
            meta = self.store.read_meta(self.store.overlay_dir(session.image, names.label))
            if meta is None:
                log.warning("reconcile: session of %s on %s has no overlay; forgetting it", session.user, session.image)
                self.book.remove(session.image, session.user)
                continue
            self._export(names, meta)
            self.lio.ensure_acl(names.target, session.initiator, session.chap_user, session.chap_secret)
            live[names.target] = session.initiator
        inventory = self.lio.inventory(self.config.iscsi.iqn.prefix)
        for target, initiators in inventory.acls.items():
            for initiator in initiators - {live.get(target, "")}:
                log.warning("reconcile: removing NodeACL %s of %s: no live session", initiator, target)
                self.lio.delete_acl(target, initiator)
        wanted = {
            storage_object_name(meta.image, overlay.name) for overlay, meta in self.store.list_overlays()
        }
        for name, kind in inventory.storage_objects.items():
            if name not in wanted:
                image, _, label = name.removeprefix("bb.").partition(".")
                target = self.config.iscsi.iqn.target(image, label)
                log.warning("reconcile: removing target %s: its overlay is gone", target)
                self.lio.delete_target(target, name, kind)

    # operations

    def _names(self, image: object, user: object) -> Names:
        image = check_image_name(image)
        user = check_user_name(user)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r}")
        label = user_label(user)
        return Names(image, user, label, self.config.iscsi.iqn.target(image, label), storage_object_name(image, label))

    def _ensure_overlay(self, names: Names) -> OverlayMeta:
        overlay = self.store.claim_overlay_dir(names.image, names.label, names.user)
        meta = self.store.read_meta(overlay)
        if meta is not None:
            return meta
        version = self.store.current_version(names.image)
        work = self.store.new_overlay_workdir(names.image, names.label)
        try:
            started = time.monotonic()
            self.backend.create(self.store.image_file(names.image, version), work)
            meta = OverlayMeta(user=names.user, image=names.image, version=version, created=time.time())
            self.store.commit_overlay(work, meta, names.label)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log.info("new overlay %s/%s from v%d in %.2f s", names.image, names.label, version, time.monotonic() - started)
        return meta

    def _export(self, names: Names, meta: OverlayMeta) -> None:
        overlay = self.store.overlay_dir(names.image, names.label)
        golden = self.store.image_file(names.image, meta.version)
        device = self.backend.attach(golden, overlay, names.storage_object)
        self.lio.ensure_target(names.target, names.storage_object, self.backend.backstore, device)

    def ensure_session(self, image: object, user: object) -> dict[str, Any]:
        """Start a boot session: overlay and target if missing, the previous session's ACL replaced by a
        new one with a fresh initiator name and CHAP secret. Touches: the overlay, its LIO target, the
        session record. Idempotent in effect; each call rotates the credentials."""
        names = self._names(image, user)
        with self._lock:
            meta = self._ensure_overlay(names)
            self._export(names, meta)
            previous = self.book.get(names.image, names.user)
            session = BootSession(
                image=names.image, user=names.user, label=names.label, version=meta.version,
                initiator=self.config.iscsi.iqn.new_initiator(names.image, names.label),
                chap_user=names.label, chap_secret=new_chap_secret(), since=time.time(),
            )
            self.lio.replace_acl(
                names.target, previous.initiator if previous else None,
                session.initiator, session.chap_user, session.chap_secret,
            )
            try:
                self.book.put(session)
            except OSError as e:
                self.lio.delete_acl(names.target, session.initiator)
                raise BackendFailure(f"cannot record the session: {e.strerror}") from None
        log.info("session for %s on %s: initiator %s%s", names.user, names.image, session.initiator,
                 " (previous session dropped)" if previous else "")
        return {
            "target_iqn": names.target,
            "lun": 0,
            "portals": [str(p) for p in self.config.iscsi.advertise],
            "initiator_iqn": session.initiator,
            "chap_user": session.chap_user,
            "chap_secret": session.chap_secret,
        }

    def end_session(self, image: object, user: object) -> dict[str, Any]:
        """End a live boot session: delete its NodeACL (the kernel drops the connection) and forget it.
        Touches: one NodeACL, its session record. The overlay and target stay. Raises NoSuchSession."""
        names = self._names(image, user)
        with self._lock:
            session = self.book.get(names.image, names.user)
            if session is None:
                raise NoSuchSession(f"{names.user} has no live session on {names.image}")
            self.lio.delete_acl(names.target, session.initiator)
            self.book.remove(names.image, names.user)
        log.info("ended session of %s on %s", names.user, names.image)
        return {"ended": True}

    def reset(self, image: object, user: object) -> dict[str, Any]:
        """Give the user a fresh overlay at the next login, keeping the old one as a dated backup.
        Touches: the live session (dropped), the target and backstore (deleted), the overlay (moved to
        backups/). Raises NoSuchOverlay when there is nothing to reset."""
        names = self._names(image, user)
        with self._lock:
            overlay = self.store.overlay_dir(names.image, names.label)
            if self.store.read_meta(overlay) is None:
                raise NoSuchOverlay(f"{names.user} has no overlay of {names.image}")
            session = self.book.get(names.image, names.user)
            self.lio.delete_target(names.target, names.storage_object, self.backend.backstore)
            if session is not None:
                self.book.remove(names.image, names.user)
            self.backend.detach(overlay, names.storage_object)
            backup = self.store.move_to_backup(overlay, names.image, names.label)
        log.info("reset %s on %s; previous overlay kept as %s", names.user, names.image, backup.name)
        return {"backup": backup.name, "dropped_session": session is not None}

    def sessions(self) -> list[dict[str, Any]]:
        """The live boot sessions, without secrets. Reads only."""
        with self._lock:
            rows = []
            for s in self.book.all():
                overlay = self.store.overlay_dir(s.image, s.label)
                rows.append({
                    "user": s.user, "image": s.image, "version": s.version, "since": s.since,
                    "initiator": s.initiator,
                    "logged_in": self.lio.logged_in(self.config.iscsi.iqn.target(s.image, s.label), s.initiator),
                    "overlay_bytes": self.backend.used_bytes(overlay),
                })
            return rows

    def publish(self, image: object, source: object) -> dict[str, Any]:
        """Store a file as the next version of an image. Touches: images/<image>/ only. Root only."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration; add [images.{image}] first")
        if not isinstance(source, str) or not source.startswith("/") or "\0" in source:
            raise BadIdentifier("source must be an absolute path")
        path = Path(source)
        if not path.is_file():
            raise BadIdentifier(f"{source} is not a regular file")
        with self._lock:
            version = self.store.publish(image, path)
        log.info("published %s v%d from %s", image, version, source)
        return {"image": image, "version": version}

    def health(self) -> dict[str, Any]:
        """A cheap summary for monitoring. Reads only; takes no lock so it answers during long work."""
        return {
            "backend": self.backend.kind.value,
            "store_free_bytes": self.store.free_bytes(),
            "sessions": len(self.book),
        }


def run_operation(helper: Helper, op: str, args: dict[str, Any]) -> Any:
    """Dispatch one validated request to its operation; the only name-to-method mapping."""
    table: dict[str, Callable[..., Any]] = {
        "ensure_session": helper.ensure_session,
        "end_session": helper.end_session,
        "reset": helper.reset,
        "sessions": helper.sessions,
        "health": helper.health,
        "publish": helper.publish,
    }
    return table[op](**args)
