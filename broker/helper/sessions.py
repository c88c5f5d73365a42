"""Boot sessions: a login's overlay, target and fresh credentials (the takeover of a disk from its previous
workstation included), the end of a session, and the list of live ones."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ..shared.access import may_boot, needs_groups
from ..shared.errors import BrokerError, NoSuchSession, NotPermitted, StoreFull
from ..shared.identifiers import new_chap_secret, storage_object_name
from .context import Names, Part, store_error
from .faults import crash_point
from .state import BootSession
from .store import OverlayMeta

log = logging.getLogger(__name__)


class BootSessions(Part):
    def ensure_session(self, image: object, user: object) -> dict[str, Any]:
        """Start a boot session: overlay and target if missing, the previous session's ACL replaced by a
        new one with a fresh initiator name and CHAP secret, and the previous initiator fenced (Lio.fence).
        Touches: the overlay, its LIO target, the session record. Idempotent in effect; each call rotates the
        credentials. Raises NotPermitted for a user the image's `users`/`groups` do not name (the broker
        checks too; this is the last word)."""
        names = self.context.names(image, user)
        config = self.config.images[names.image]
        groups = self.context.directory.groups_of(names.user) if needs_groups([config], names.user) else frozenset()
        if not may_boot(config, names.user, groups):
            raise NotPermitted(f"{names.user} may not boot {names.image} (see its users and groups)")
        with self.context.lock:
            self.context.check_not_publishing(names)
            meta = self._ensure_overlay(names)
            crash_point("overlay-committed")
            self.context.export(names, meta)
            crash_point("target-created")
            previous = self.book.get(names.image, names.user)
            session = BootSession(
                image=names.image, user=names.user, label=names.label, version=meta.version,
                initiator=self.config.iscsi.iqn.new_initiator(names.image, names.label),
                chap_user=names.label, chap_secret=new_chap_secret(), since=time.time(),
            )
            # Recorded first: a crash from here on is repaired at start by putting this session's ACL in place.
            # If the record cannot be written, nothing has changed yet.
            try:
                self.book.put(session)
            except OSError as e:
                raise store_error(e, "record the session") from None
            crash_point("session-recorded")
            try:
                self.lio.replace_acls(names.target, session.initiator, session.chap_user, session.chap_secret)
            except BrokerError:
                self._settle_after_failed_login(names, session, previous)
                raise
            crash_point("acl-replaced")
            if previous is not None and previous.initiator != session.initiator:
                self._fence(names, previous)
        self._check_fill(names.user, names.image, names.storage_object)  # a read (dmsetup status): after the lock
        log.info("session for %s on %s: initiator %s%s", names.user, names.image, session.initiator,
                 " (previous session dropped)" if previous else "")
        return {
            "target_iqn": names.target,
            "lun": 0,
            "portals": [str(p) for p in self.config.iscsi.advertise],
            "initiator_iqn": session.initiator,
            "chap_user": session.chap_user,
            "chap_secret": session.chap_secret,
            # The overlay's version, and whether it has its own kernel and initrd (`boot_file`), for netroot.
            "version": meta.version,
            "boot_files": self.store.has_boot_files(names.image, meta.version),
        }

    def end_session(self, image: object, user: object) -> dict[str, Any]:
        """End a live boot session: delete its NodeACL (the kernel drops the connection) and forget it.
        Touches: one NodeACL, its session record. The overlay and target stay. Raises NoSuchSession."""
        names = self.context.names(image, user)
        with self.context.lock:
            session = self.book.get(names.image, names.user)
            if session is None:
                raise NoSuchSession(f"{names.user} has no live session on {names.image}")
            self.context.end(names, session)
        log.info("ended session of %s on %s", names.user, names.image)
        return {"ended": True}

    def sessions(self) -> list[dict[str, Any]]:
        """The live boot sessions, without secrets. Reads only; takes no lock (it runs while logins wait):
        a session that changes meanwhile shows as it was a moment ago."""
        rows = []
        for s in self.book.all():
            overlay = self.store.overlay_dir(s.image, s.label)
            try:
                used = self.backend.used_bytes(overlay)
            except FileNotFoundError:  # reset meanwhile
                continue
            rows.append({
                "user": s.user, "image": s.image, "version": s.version, "since": s.since,
                "initiator": s.initiator,
                "logged_in": self.lio.logged_in(self.config.iscsi.iqn.target(s.image, s.label), s.initiator),
                "overlay_bytes": used,
                "fill_percent": self._check_fill(s.user, s.image, storage_object_name(s.image, s.label)),
            })
        return rows

    def _ensure_overlay(self, names: Names) -> OverlayMeta:
        overlay = self.store.claim_overlay_dir(names.image, names.label, names.user)
        meta = self.store.read_meta(overlay)
        if meta is not None:
            return meta
        version = self.store.current_version(names.image)
        self._check_reserve()
        try:
            work = self.store.new_overlay_workdir(names.image, names.label)
        except OSError as e:
            raise store_error(e) from None
        try:
            started = time.monotonic()
            self.backend.create(self.store.image_file(names.image, version), work)
            crash_point("overlay-created")
            meta = OverlayMeta(user=names.user, image=names.image, version=version, created=time.time())
            self.store.commit_overlay(work, meta, names.label)
        except OSError as e:
            self._discard(work)
            raise store_error(e) from None
        except BaseException:
            self._discard(work)
            raise
        log.info("new overlay %s/%s from v%d in %.2f s", names.image, names.label, version, time.monotonic() - started)
        return meta

    def _discard(self, work: Path) -> None:
        """Remove a half-made overlay, what the backend made of it first; left to the start-up repair if the
        backend cannot."""
        try:
            self.backend.discard(work)
        except BrokerError as e:
            log.error("cannot discard the half-made overlay %s (%s): the helper's next start removes it", work, e.message)
            return
        shutil.rmtree(work, ignore_errors=True)

    def _check_reserve(self) -> None:
        """Refuse a new overlay when the room overlays grow in (the store's filesystem, or dm-thin's pool) has
        less free than [store] min_free_percent: the overlays already there need it. Users who have an overlay
        still boot."""
        where, free, size = self.backend.room() or ("the store", self.store.free_bytes(), self.store.size_bytes())
        reserve = size * self.config.store.min_free_percent // 100
        if free < reserve:
            raise StoreFull(
                f"{where} has {free / 2**30:.1f} GiB free, below the {self.config.store.min_free_percent}% "
                f"({reserve / 2**30:.1f} GiB) kept for existing overlays: no new overlays until space is freed "
                "(retire old image versions, let backups expire)"
            )

    def _check_fill(self, user: str, image: str, storage_object: str) -> float | None:
        """The overlay's fill level (dm-snapshot: its COW file; dm-thin: the pool), with a warning in the log from
        [store] fill_warn_percent."""
        fill = self.backend.fill_percent(storage_object)
        if fill is not None and fill >= self.config.store.fill_warn_percent:
            log.warning("the overlay of %s on %s is %.0f%% full; %s", user, image, fill, self.backend.fill_advice)
        return fill

    def _fence(self, names: Names, previous: BootSession) -> None:
        """Let the dropped workstation log in again to nothing (Lio.fence), so its OS stops retrying a refused
        login forever. The takeover itself is done: a fence LIO refuses costs only the log lines it saves."""
        try:
            self.lio.fence(names.target, previous.initiator, previous.chap_user, previous.chap_secret)
        except BrokerError as e:
            log.warning("could not fence the previous workstation of %s on %s (%s): its OS retries its login "
                        "meanwhile, each refused", names.user, names.image, e.message)

    def _settle_after_failed_login(self, names: Names, failed: BootSession, previous: BootSession | None) -> None:
        """After LIO refused part of a login: take this login's ACL away again and make the record say which
        ACL is left, so a target never has two writers and the next login knows whom to drop. If LIO cannot
        even be read, the record stays: it names the newest credentials, and the next login (or the start-up
        repair) removes every other ACL."""
        try:
            self.lio.delete_acl(names.target, failed.initiator)
            left = self.lio.acls(names.target)
        except BrokerError as e:
            log.error("LIO state of %s unknown after a failed login (%s): the next login repairs it", names.target, e.message)
            return
        try:
            if previous is not None and left == {previous.initiator}:
                self.book.put(previous)  # the old session could not be dropped: it is still the live one
            else:
                self.book.remove(names.image, names.user)
        except OSError as e:
            log.error("cannot correct the session record of %s on %s (%s): the next login repairs it",
                      names.user, names.image, e.strerror)
        if left - ({previous.initiator} if previous else set()):
            log.error("target %s keeps NodeACLs no record names (%s): the next login removes them",
                      names.target, ", ".join(sorted(left)))
