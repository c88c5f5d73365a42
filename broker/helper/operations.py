"""The helper's operations: every root-only change, on validated identifiers, under one lock.

`Helper` is the use-case layer of the privileged daemon: it derives every path and name itself, keeps the
three sources of truth in step (overlays on disk, targets in LIO, live sessions in the session records), and
repairs half-done work at start (`reconcile`). The socket server in `helper_server` decides who may call
what; this module trusts its caller and checks only the arguments.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..shared.access import may_boot, needs_groups
from .backends import Backend
from ..shared.config import BootMethod, Config
from ..shared.errors import (
    BackendFailure, BadIdentifier, BrokerError, Conflict, NoSuchOverlay, NoSuchSession, NotPermitted, StoreFull, UnknownImage,
)
from ..shared.identifiers import (
    check_backup_name, check_boot_file, check_image_name, check_user_name, check_version, new_chap_secret, storage_object_name,
    user_label,
)
from .faults import crash_point
from .copies import clone_or_copy_from, sha256_of
from ..images.bootfiles import BootFiles, NotFound, extract
from .lio import Lio
from ..shared.protocol import OpenFile
from .state import BootSession, SessionBook
from .store import DamagedMeta, OverlayMeta, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Names:
    """Everything derived from one (image, user) pair."""

    image: str
    user: str
    label: str
    target: str
    storage_object: str


class Directory(Protocol):
    """Group membership (NssDirectory in production)."""

    def groups_of(self, user: str) -> frozenset[str]: ...


class Helper:
    def __init__(self, config: Config, backend: Backend, lio: Lio, directory: Directory) -> None:
        self.config = config
        self.directory = directory
        self.store = Store(config.store.path)
        self.backend = backend
        self.lio = lio
        self.book = SessionBook(config.store.sessions_dir)
        self._lock = threading.Lock()
        self._unusable: list[str] = []  # what start-up could not use besides session records, for `health`
        self._publishing: set[tuple[str, str]] = set()  # (image, user) whose overlay is being copied
        self._missing: set[tuple[str, str]] = set()  # live sessions LIO lacked at the last repair_lost

    # start-up

    def start(self) -> None:
        """Prove the store, backend and LIO work, then reconcile. Raises BrokerError saying what to fix."""
        try:
            self.store.prepare()
            problem = self.store.unsafe_directory()
        except OSError as e:
            raise BackendFailure(str(e)) from None
        if problem:
            raise BackendFailure(f"[store] path: {problem}")
        self.backend.probe(self.store.tmp)
        self.lio.check()
        with self._lock:
            self.book.load()
            self._reconcile()
            self._expire_backups()

    def _reconcile(self) -> None:
        """Make LIO and the session records agree with the overlays on disk, repairing half-done work."""
        for leftover in self.store.tmp.glob("overlay-*"):
            log.warning("reconcile: removing half-made overlay %s", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.store.tmp.glob("publish-*"):
            log.warning("reconcile: removing half-published image %s", leftover.name)
            if leftover.is_dir() and not leftover.is_symlink():  # its kernel and initrd, being read out of it
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        for image in self.config.images:
            for version in self.store.discard_unfinished(image):
                log.warning("reconcile: removing %s v%d: its publish was interrupted before it became current",
                            image, version)
        damaged = self.store.damaged()
        self._unusable = [e.message for e in damaged]
        for note in self._unusable:
            log.error("reconcile: %s", note)
        live: dict[str, str] = {}  # target IQN -> initiator of its live session
        for session in self.book.all():
            if session.image not in self.config.images:
                self.book.set_aside_session(session, f"image {session.image!r} is no longer in the configuration")
                continue
            names = self._names(session.image, session.user)
            try:
                meta = self.store.read_meta(self.store.overlay_dir(session.image, names.label))
            except DamagedMeta as e:
                self.book.set_aside_session(session, e.message)
                continue
            if meta is None:
                log.warning("reconcile: session of %s on %s has no overlay; forgetting it", session.user, session.image)
                self.book.remove(session.image, session.user)
                continue
            try:
                self._put_back(names, session, meta)
            except BrokerError as e:
                # Kept: the record is retried at the next start; everyone else is served meanwhile.
                note = f"session of {session.user} on {session.image} not restored: {e.message}"
                log.error("reconcile: %s", note)
                self._unusable.append(note)
                continue
            live[names.target] = session.initiator
        inventory = self.lio.inventory(self.config.iscsi.iqn.prefix)
        for target in inventory.acls:
            self.lio.enforce_attributes(target)
        for target, initiators in inventory.acls.items():
            for initiator in initiators - {live.get(target, "")}:
                if not self.lio.serves(target, initiator):
                    continue  # maps no LUN, so grants nothing: a fence (Lio.fence), which the next login replaces
                log.warning("reconcile: removing NodeACL %s of %s: no live session", initiator, target)
                self.lio.delete_acl(target, initiator)
        wanted = {
            storage_object_name(meta.image, overlay.name) for overlay, meta in self.store.list_overlays()
        } | {  # a damaged overlay keeps its target: only its metadata is unknown
            storage_object_name(e.path.parent.parent.name, e.path.parent.name)
            for e in damaged if e.path.parent.parent.parent == self.store.overlays
        }
        for name, kind in inventory.storage_objects.items():
            if name not in wanted:
                image, _, label = name.removeprefix("bb.").partition(".")
                target = self.config.iscsi.iqn.target(image, label)
                log.warning("reconcile: removing target %s: its overlay is gone", target)
                self.lio.delete_target(target, name, kind)

    def _put_back(self, names: Names, session: BootSession, meta: OverlayMeta) -> None:
        """Export the overlay and give the session's initiator its ACL with the credentials it has, as after
        a reboot or a `targetctl clear`. Idempotent. Call with the lock held."""
        self._export(names, meta)
        self.lio.ensure_acl(names.target, session.initiator, session.chap_user, session.chap_secret)

    def repair_lost(self) -> int:
        """Put back the target, LUN and NodeACL of every live session that LIO lost while the helper ran
        (`targetctl clear`, a restart of target.service), with the credentials its workstation has, so it
        reconnects by itself. Cheap when nothing is lost (one stat per live session, no lock): the helper
        runs it every few seconds. A session is put back only once it was found missing twice in a row: LIO
        emptied by another program is still changing at the first sight (repairing in the middle of a
        `targetctl clear` makes it fail, and it then removes half of what was put back). Returns how many
        sessions were put back."""
        missing = {
            (s.image, s.user) for s in self.book.all()
            if not self.lio.serves(self.config.iscsi.iqn.target(s.image, s.label), s.initiator)
        }
        seen_before, self._missing = self._missing, missing
        due = missing & seen_before
        if not due:
            return 0
        repaired = 0
        with self._lock:
            self.lio.forget()
            for session in self.book.all():  # again under the lock: a login may have been half-way
                names = self._names(session.image, session.user)
                if (session.image, session.user) not in due or self.lio.serves(names.target, session.initiator):
                    continue
                meta = self.store.read_meta(self.store.overlay_dir(names.image, names.label))
                if meta is None:
                    continue
                self._put_back(names, session, meta)
                repaired += 1
        if repaired:
            log.warning("LIO lost %d live session(s) while the helper ran (targetctl clear, or target.service "
                        "restarted?): their targets and ACLs are back", repaired)
        return repaired

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
        self._check_reserve()
        try:
            work = self.store.new_overlay_workdir(names.image, names.label)
        except OSError as e:
            raise _store_error(e) from None
        try:
            started = time.monotonic()
            self.backend.create(self.store.image_file(names.image, version), work)
            crash_point("overlay-created")
            meta = OverlayMeta(user=names.user, image=names.image, version=version, created=time.time())
            self.store.commit_overlay(work, meta, names.label)
        except OSError as e:
            shutil.rmtree(work, ignore_errors=True)
            raise _store_error(e) from None
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log.info("new overlay %s/%s from v%d in %.2f s", names.image, names.label, version, time.monotonic() - started)
        return meta

    def _check_fill(self, user: str, image: str, storage_object: str) -> float | None:
        """The overlay's fill level (dm-snapshot), with a warning in the log from [store] fill_warn_percent."""
        fill = self.backend.fill_percent(storage_object)
        if fill is not None and fill >= self.config.store.fill_warn_percent:
            log.warning("the overlay of %s on %s is %.0f%% full; at 100%% it becomes invalid and its changes are "
                        "lost: reset the user, or raise [store] cow_percent for new overlays", user, image, fill)
        return fill

    def _check_reserve(self) -> None:
        """Refuse a new overlay when the store's free space is below [store] min_free_percent: the overlays
        already there need that room to grow. Users who have an overlay still boot."""
        free, size = self.store.free_bytes(), self.store.size_bytes()
        reserve = size * self.config.store.min_free_percent // 100
        if free < reserve:
            raise StoreFull(
                f"the store has {free / 2**30:.1f} GiB free, below the {self.config.store.min_free_percent}% "
                f"({reserve / 2**30:.1f} GiB) kept for existing overlays: no new overlays until space is freed "
                "(retire old image versions, let backups expire)"
            )

    def _export(self, names: Names, meta: OverlayMeta) -> None:
        overlay = self.store.overlay_dir(names.image, names.label)
        golden = self.store.image_file(names.image, meta.version)
        device = self.backend.attach(golden, overlay, names.storage_object)
        self.lio.ensure_target(names.target, names.storage_object, self.backend.backstore, device)

    def ensure_session(self, image: object, user: object) -> dict[str, Any]:
        """Start a boot session: overlay and target if missing, the previous session's ACL replaced by a
        new one with a fresh initiator name and CHAP secret, and the previous initiator fenced (Lio.fence).
        Touches: the overlay, its LIO target, the session record. Idempotent in effect; each call rotates the
        credentials. Raises NotPermitted for a user the image's `users`/`groups` do not name (the broker
        checks too; this is the last word)."""
        names = self._names(image, user)
        config = self.config.images[names.image]
        groups = self.directory.groups_of(names.user) if needs_groups([config], names.user) else frozenset()
        if not may_boot(config, names.user, groups):
            raise NotPermitted(f"{names.user} may not boot {names.image} (see its users and groups)")
        with self._lock:
            self._check_not_publishing(names)
            meta = self._ensure_overlay(names)
            crash_point("overlay-committed")
            self._export(names, meta)
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
                raise _store_error(e, "record the session") from None
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

    def end_session(self, image: object, user: object) -> dict[str, Any]:
        """End a live boot session: delete its NodeACL (the kernel drops the connection) and forget it.
        Touches: one NodeACL, its session record. The overlay and target stay. Raises NoSuchSession."""
        names = self._names(image, user)
        with self._lock:
            session = self.book.get(names.image, names.user)
            if session is None:
                raise NoSuchSession(f"{names.user} has no live session on {names.image}")
            self._end(names, session)
        log.info("ended session of %s on %s", names.user, names.image)
        return {"ended": True}

    def _end(self, names: Names, session: BootSession) -> None:
        """Delete the session's ACL (the kernel drops its connection), then its record. Call with the lock held."""
        self.lio.delete_acl(names.target, session.initiator)
        self.book.remove(names.image, names.user)

    def reset(self, image: object, user: object) -> dict[str, Any]:
        """Give the user a fresh overlay of `image` (None: of every image they have one of) at the next
        login, keeping the old one as a dated backup. Touches: the live session (dropped), the target and
        backstore (deleted), the overlay (moved to backups/). Raises NoSuchOverlay when there is nothing
        to reset."""
        user = check_user_name(user)
        with self._lock:
            images = [check_image_name(image)] if image is not None else list(self.config.images)
            targets = [self._names(name, user) for name in images]
            targets = [n for n in targets if self.store.read_meta(self.store.overlay_dir(n.image, n.label))]
            if not targets:
                raise NoSuchOverlay(f"{user} has no overlay" + (f" of {image}" if image is not None else ""))
            done = []
            for names in targets:
                backup, dropped = self._set_aside(names)
                log.info("reset %s on %s; previous overlay kept as %s", names.user, names.image, backup.name)
                done.append({"image": names.image, "backup": backup.name, "dropped_session": dropped})
            self._expire_backups()
        return {"user": user, "reset": done}

    def rebase(self, image: object, user: object) -> dict[str, Any]:
        """Move the user to the image's current version: their overlay (made from an older one) is set aside
        as a dated backup, as in reset, and the next login makes a fresh copy of the current version.
        Raises NoSuchOverlay, or Conflict if the overlay is already on the current version."""
        names = self._names(image, user)
        with self._lock:
            meta = self.store.read_meta(self.store.overlay_dir(names.image, names.label))
            if meta is None:
                raise NoSuchOverlay(f"{names.user} has no overlay of {names.image}")
            current = self.store.current_version(names.image)
            if meta.version == current:
                raise Conflict(f"{names.user} is already on {names.image} v{current}, the current version")
            backup, dropped = self._set_aside(names)
            self._expire_backups()
        log.info("rebased %s on %s from v%d to v%d; previous overlay kept as %s", names.user, names.image,
                 meta.version, current, backup.name)
        return {"from": meta.version, "to": current, "backup": backup.name, "dropped_session": dropped}

    def restore(self, image: object, user: object, backup: object) -> dict[str, Any]:
        """Bring back one of the user's backups (`backup`, or the newest for None) as their overlay. The
        overlay they have now, if any, becomes a backup first (as in reset): nothing is deleted. Touches:
        the live session (dropped), the target and backstore, the overlay and the backup directories.
        Raises NoSuchOverlay if there is no such backup, Conflict if its golden version was retired."""
        names = self._names(image, user)
        with self._lock:
            backups = self.store.backups_of(names.image, names.label)
            if backup is None:
                if not backups:
                    raise NoSuchOverlay(f"{names.user} has no backup of {names.image}")
                chosen = backups[-1]
            else:
                chosen = self.store.backup_dir(names.image, names.label, check_backup_name(backup))
                if chosen not in backups:
                    known = ", ".join(b.name for b in backups) or "none"
                    raise NoSuchOverlay(f"{names.user} has no backup {chosen.name} of {names.image} (backups: {known})")
            meta = self.store.read_meta(chosen)
            assert meta is not None  # backups_of lists only directories with their meta.json
            if not self.store.image_file(names.image, meta.version).exists():
                raise Conflict(f"backup {chosen.name} was made from {names.image} v{meta.version}, which was retired")
            set_aside: Path | None = None
            dropped = False
            if self.store.read_meta(self.store.overlay_dir(names.image, names.label)) is not None:
                set_aside, dropped = self._set_aside(names)
            self.store.restore_backup(chosen, names.image, names.label)
            self._expire_backups()  # only now: the chosen backup may be an old one
        log.info("restored %s on %s from backup %s%s", names.user, names.image, chosen.name,
                 f"; the overlay it replaced kept as {set_aside.name}" if set_aside else "")
        return {"restored": chosen.name, "backup": set_aside.name if set_aside else None, "dropped_session": dropped}

    def _check_not_publishing(self, names: Names) -> None:
        if (names.image, names.user) in self._publishing:
            raise Conflict(f"the overlay of {names.user} on {names.image} is being published as a new version: "
                           "it cannot be used or changed until that is done; try again in a few minutes")

    def _set_aside(self, names: Names) -> tuple[Path, bool]:
        """Drop the live session, the target and the backend's device, and move the overlay to a dated
        backup. Returns the backup and whether a session was dropped. Call with the lock held."""
        self._check_not_publishing(names)
        overlay = self.store.overlay_dir(names.image, names.label)
        session = self.book.get(names.image, names.user)
        self.lio.delete_target(names.target, names.storage_object, self.backend.backstore)
        crash_point("reset-target-deleted")
        if session is not None:
            self.book.remove(names.image, names.user)
        self.backend.detach(overlay, names.storage_object)
        crash_point("reset-detached")
        return self.store.move_to_backup(overlay, names.image, names.label), session is not None

    def _expire_backups(self) -> None:
        """Delete backups older than [store] backup_days. Call with the lock held."""
        for backup in self.store.expired_backups(self.config.store.backup_days, time.time()):
            shutil.rmtree(backup)
            log.info("deleted backup %s of %s/%s: older than %d days", backup.name, backup.parent.parent.name,
                     backup.parent.name, self.config.store.backup_days)

    def backups(self) -> list[dict[str, Any]]:
        """Every backup in the store: user, image, name (to restore it), golden version, when it was
        made (the overlay's creation) and bytes used. Reads only; takes no lock (it runs while logins wait),
        so a backup restored meanwhile is left out."""
        rows = []
        for path, meta in self.store.list_backups():
            try:
                used = self.backend.used_bytes(path)
            except FileNotFoundError:
                continue
            rows.append({"user": meta.user, "image": meta.image, "backup": path.name, "version": meta.version,
                         "created": meta.created, "bytes_used": used})
        return rows

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

    def publish(self, image: object, source: object) -> dict[str, Any]:
        """Store a file as the next version of an image. Touches: images/<image>/ only. Root only."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration; add [images.{image}] first")
        if not isinstance(source, str) or not source.startswith("/") or "\0" in source:
            raise BadIdentifier("source must be an absolute path")
        # Opened once, without following a link, and checked by its descriptor: the file copied is the one
        # checked, whatever the name points to by the time the copy starts.
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BadIdentifier(f"{source} is a symbolic link: give the image file itself") from None
            raise BadIdentifier(f"cannot open {source}: {e.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadIdentifier(f"{source} is not a regular file")
            # The copy and the checksum, which take long for a big image, happen before taking the lock:
            # logins go on meanwhile. Only numbering and renaming the version is done under it.
            try:
                staged = self.store.stage_version(image, lambda tmp: clone_or_copy_from(fd, tmp))
            except OSError as e:
                raise _store_error(e, f"copy {source} into the store") from None
        finally:
            os.close(fd)
        crash_point("publish-staged")
        version, sha256, immutable, boot = self._commit(image, staged)
        log.info("published %s v%d from %s (sha256 %s)%s%s", image, version, source, sha256, _kept(boot),
                 "" if immutable else "; the store's filesystem has no immutable flag")
        return {"image": image, "version": version, "sha256": sha256, "immutable": immutable, **_boot_result(boot)}

    def publish_overlay(self, image: object, from_image: object, user: object) -> dict[str, Any]:
        """Publish a user's overlay of `from_image` (their golden version with their changes) as the next
        version of `image`: a teacher prepares a disk, the class gets it. Refused (Conflict) while that
        user is logged in on it; a session that is not logged in is ended first (its ACL deleted), so no
        workstation can reconnect and write during the copy, and the user's logins, resets and restores of
        that overlay are refused until it is done. The copy (a dm-snapshot is read whole) runs without the
        lock: everyone else logs in meanwhile. Touches: the user's session, images/<image>/ (a dm-snapshot
        is attached for the copy if it was not). Root only."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration; add [images.{image}] first")
        names = self._names(from_image, user)
        with self._lock:
            self._check_not_publishing(names)
            overlay = self.store.overlay_dir(names.image, names.label)
            meta = self.store.read_meta(overlay)
            if meta is None:
                raise NoSuchOverlay(f"{names.user} has no overlay of {names.image}")
            session = self.book.get(names.image, names.user)
            if session is not None:
                if self.lio.logged_in(names.target, session.initiator):
                    raise Conflict(f"{names.user} is logged in on {names.image}: publish when that workstation is off, "
                                   "or end the session first")
                self._end(names, session)
                log.info("ended the session of %s on %s to publish the overlay", names.user, names.image)
            self._publishing.add((names.image, names.user))
        try:
            golden = self.store.image_file(names.image, meta.version)
            staged = self.store.stage_version(
                image, lambda destination: self.backend.materialize(golden, overlay, names.storage_object, destination)
            )
        finally:
            with self._lock:
                self._publishing.discard((names.image, names.user))
        version, sha256, immutable, boot = self._commit(image, staged)
        log.info("published %s v%d from the overlay of %s on %s v%d (sha256 %s)%s", image, version, names.user,
                 names.image, meta.version, sha256, _kept(boot))
        return {"image": image, "version": version, "sha256": sha256, "immutable": immutable, **_boot_result(boot)}

    def _commit(self, image: str, staged: Path) -> tuple[int, str, bool, BootFiles | None]:
        """Checksum a staged version and read its kernel and initrd out of it without the lock (both read
        the file), then number it and make it current under the lock, with its boot files beside it. The
        staged file and what was read out of it are removed if anything fails."""
        work = staged.with_name(f"{staged.name}.boot")  # tmp/publish-*: start-up removes it after a crash
        try:
            sha256 = sha256_of(staged)
            boot = self._boot_files(image, staged, work)
            with self._lock:
                version, sha256, immutable = self.store.commit_version(
                    image, staged, sha256, boot.directory if boot is not None else None)
            return version, sha256, immutable, boot
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _boot_files(self, image: str, staged: Path, work: Path) -> BootFiles | None:
        """The kernel and initrd of a staged version, read out of it into `work`; None if it has none.

        Looked for in every image, not only those that boot by netroot today: `boot` is a line of the
        configuration that an admin may change at any time, while a version never changes, and the users
        pinned to it cannot all be moved (rebase sets their disks aside). Reading them costs a few seconds
        and two files' room (tens of MiB) beside a disk of GiB. Required (the publish refused) only for a
        netroot image without kernel and initrd URLs: it would publish a version nobody can boot."""
        config = self.config.images[image]
        required = config.boot is BootMethod.NETROOT and not config.kernel
        work.mkdir(mode=0o700)
        try:
            return extract(staged, work)
        except NotFound as e:
            if required:
                raise BadIdentifier(
                    f"{image} boots by netroot with the kernel and initrd of each version ([images.{image}] sets no "
                    f"kernel and initrd URLs), and this disk has none: {e}. Install a kernel and its initramfs in the "
                    "image (on an ext2/3/4 root or /boot), or set kernel and initrd URLs; nothing was published"
                ) from None
            log.info("%s: the new version has no kernel and initrd of its own (it cannot boot by netroot): %s", image, e)
        except BackendFailure as e:
            if required:
                raise BackendFailure(f"cannot read the kernel and initrd out of the new version of {image}: "
                                     f"{e.message}; nothing was published") from None
            log.warning("%s: the new version's kernel and initrd were not looked for (it cannot boot by netroot): %s",
                        image, e.message)
        return None

    def boot_file(self, image: object, version: object, name: object) -> OpenFile:
        """An open, read-only descriptor of a published version's own kernel or initrd (`name`: vmlinuz or
        initrd.img), for the broker to send to a netroot workstation: it cannot open anything in the
        store itself. Reads only; takes no lock (a retire meanwhile leaves the open file readable). Raises
        UnknownImage if that version or its file is not there."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration")
        version = check_version(version)
        name = check_boot_file(name)
        try:
            fd = os.open(self.store.boot_file(image, version, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnknownImage(f"{image} v{version} has no {name} of its own (retired, or published without one)") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UnknownImage(f"{image} v{version}'s {name} is not a regular file")
        return OpenFile(fd, st.st_size)

    def published(self) -> list[str]:
        """The configured images that have a current version: what a menu may offer. Reads only, no lock."""
        return [name for name in self.config.images if self.store.has_current(name)]

    def images(self) -> list[dict[str, Any]]:
        """Every configured image: its versions, which one is current, how many overlays and backups were
        made from each, file size and bytes used. Reads only; takes no lock."""
        pins = self.store.pins()
        rows = []
        for name, image in self.config.images.items():
            try:
                current: int | None = self.store.current_version(name)
            except UnknownImage:
                current = None
            versions = []
            for version in self.store.versions(name):
                try:
                    st = self.store.image_file(name, version).stat()
                except FileNotFoundError:  # retired meanwhile
                    continue
                overlays, backups = pins.get((name, version), (0, 0))
                versions.append({
                    "version": version, "current": version == current, "published": st.st_mtime,
                    "sha256": self.store.checksum(name, version),
                    "boot_files": self.store.has_boot_files(name, version),
                    "size": st.st_size, "bytes_used": st.st_blocks * 512, "overlays": overlays, "backups": backups,
                })
            rows.append({"image": name, "description": image.description, "current": current, "versions": versions})
        return rows

    def retire(self, image: object, version: object) -> dict[str, Any]:
        """Delete one version of an image (`version`), or all of them (None). Refuses the current version
        and any version an overlay or a backup was made from (Conflict, naming the users). Touches:
        images/<image>/ only. Root only."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration")
        if version is not None:
            version = check_version(version)
        with self._lock:
            retired = self.store.retire(image, version)
        log.info("retired %s %s", image, ", ".join(f"v{v}" for v in retired))
        return {"image": image, "retired": retired}

    def set_current(self, image: object, version: object) -> dict[str, Any]:
        """Make a published version of an image current again (new overlays are made from it; existing ones
        stay on theirs): an admin's way back from a bad publish. Touches: images/<image>/current only.
        Idempotent. Root only."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration")
        version = check_version(version)
        with self._lock:
            previous = self.store.set_current(image, version)
        log.info("%s: v%d is current (was v%d)", image, version, previous)
        return {"image": image, "current": version, "previous": previous}

    def health(self) -> dict[str, Any]:
        """A cheap summary for monitoring. Reads only; takes no lock so it answers during long work."""
        return {
            "backend": self.backend.kind.value,
            "store_free_bytes": self.store.free_bytes(),
            "sessions": len(self.book),
            "overlays": self.store.count_overlays(),
            "backups": self.store.count_backups(),
            "set_aside": self.book.set_aside + self._unusable,
        }


def _kept(boot: BootFiles | None) -> str:
    return f"; its kernel {boot.kernel} and initrd {boot.initrd} kept beside it" if boot is not None else ""


def _boot_result(boot: BootFiles | None) -> dict[str, str | None]:
    """Where the version's kernel and initrd were in it (None: it has none of its own)."""
    return {"kernel": boot.kernel if boot else None, "initrd": boot.initrd if boot else None}


def _store_error(e: OSError, doing: str = "make the overlay") -> BrokerError:
    """An OSError from the store, as an answer: StoreFull when the filesystem ran out of room."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"the store ran out of room (could not {doing}: {e.strerror}); nothing was changed")
    return BackendFailure(f"cannot {doing}: {e.strerror or e}")


def run_operation(helper: Helper, op: str, args: dict[str, Any]) -> Any:
    """Dispatch one validated request to its operation; the only name-to-method mapping."""
    table: dict[str, Callable[..., Any]] = {
        "ensure_session": helper.ensure_session,
        "end_session": helper.end_session,
        "reset": helper.reset,
        "sessions": helper.sessions,
        "health": helper.health,
        "publish": helper.publish,
        "images": helper.images,
        "published": helper.published,
        "publish_overlay": helper.publish_overlay,
        "restore": helper.restore,
        "rebase": helper.rebase,
        "backups": helper.backups,
        "retire": helper.retire,
        "set_current": helper.set_current,
        "boot_file": helper.boot_file,
    }
    return table[op](**args)
