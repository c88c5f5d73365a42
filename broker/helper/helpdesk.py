"""The helpdesk's operations on a user's disk: reset it to the golden image, rebase it on the current version,
restore a backup, list the backups; every one keeps what it replaces as a dated backup, for `backup_days`."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ..shared.errors import BrokerError, Conflict, NoSuchOverlay
from ..shared.identifiers import check_backup_name, check_image_name, check_user_name
from .context import Names, Part
from .faults import crash_point

log = logging.getLogger(__name__)


class Helpdesk(Part):
    def reset(self, image: object, user: object) -> dict[str, Any]:
        """Give the user a fresh overlay of `image` (None: of every image they have one of) at the next
        login, keeping the old one as a dated backup. Touches: the live session (dropped), the target and
        backstore (deleted), the overlay (moved to backups/). Raises NoSuchOverlay when there is nothing
        to reset."""
        user = check_user_name(user)
        with self.context.lock:
            images = [check_image_name(image)] if image is not None else list(self.config.images)
            targets = [self.context.names(name, user) for name in images]
            targets = [n for n in targets if self.store.read_meta(self.store.overlay_dir(n.image, n.label))]
            if not targets:
                raise NoSuchOverlay(f"{user} has no overlay" + (f" of {image}" if image is not None else ""))
            done = []
            for names in targets:
                backup, dropped = self._set_aside(names)
                log.info("reset %s on %s; previous overlay kept as %s", names.user, names.image, backup.name)
                done.append({"image": names.image, "backup": backup.name, "dropped_session": dropped})
            self.expire_backups()
        return {"user": user, "reset": done}

    def rebase(self, image: object, user: object) -> dict[str, Any]:
        """Move the user to the image's current version: their overlay (made from an older one) is set aside
        as a dated backup, as in reset, and the next login makes a fresh copy of the current version.
        Raises NoSuchOverlay, or Conflict if the overlay is already on the current version."""
        names = self.context.names(image, user)
        with self.context.lock:
            meta = self.store.read_meta(self.store.overlay_dir(names.image, names.label))
            if meta is None:
                raise NoSuchOverlay(f"{names.user} has no overlay of {names.image}")
            current = self.store.current_version(names.image)
            if meta.version == current:
                raise Conflict(f"{names.user} is already on {names.image} v{current}, the current version")
            backup, dropped = self._set_aside(names)
            self.expire_backups()
        log.info("rebased %s on %s from v%d to v%d; previous overlay kept as %s", names.user, names.image,
                 meta.version, current, backup.name)
        return {"from": meta.version, "to": current, "backup": backup.name, "dropped_session": dropped}

    def restore(self, image: object, user: object, backup: object) -> dict[str, Any]:
        """Bring back one of the user's backups (`backup`, or the newest for None) as their overlay. The
        overlay they have now, if any, becomes a backup first (as in reset): nothing is deleted. Touches:
        the live session (dropped), the target and backstore, the overlay and the backup directories.
        Raises NoSuchOverlay if there is no such backup, Conflict if its golden version was retired."""
        names = self.context.names(image, user)
        with self.context.lock:
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
            self.expire_backups()  # only now: the chosen backup may be an old one
        log.info("restored %s on %s from backup %s%s", names.user, names.image, chosen.name,
                 f"; the overlay it replaced kept as {set_aside.name}" if set_aside else "")
        return {"restored": chosen.name, "backup": set_aside.name if set_aside else None, "dropped_session": dropped}

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

    def _set_aside(self, names: Names) -> tuple[Path, bool]:
        """Drop the live session, the target and the backend's device, and move the overlay to a dated
        backup. Returns the backup and whether a session was dropped. Call with the lock held."""
        self.context.check_not_publishing(names)
        overlay = self.store.overlay_dir(names.image, names.label)
        session = self.book.get(names.image, names.user)
        self.lio.delete_target(names.target, names.storage_object, self.backend.backstore)
        crash_point("reset-target-deleted")
        if session is not None:
            self.book.remove(names.image, names.user)
        self.backend.detach(overlay, names.storage_object)
        crash_point("reset-detached")
        return self.store.move_to_backup(overlay, names.image, names.label), session is not None

    def expire_backups(self) -> None:
        """Delete backups older than [store] backup_days. Call with the lock held."""
        for backup in self.store.expired_backups(self.config.store.backup_days, time.time()):
            try:
                self.backend.discard(backup)
            except BrokerError as e:
                log.error("cannot delete backup %s of %s/%s (%s): tried again at the next expiry", backup.name,
                          backup.parent.parent.name, backup.parent.name, e.message)
                continue
            shutil.rmtree(backup)
            log.info("deleted backup %s of %s/%s: older than %d days", backup.name, backup.parent.parent.name,
                     backup.parent.name, self.config.store.backup_days)
