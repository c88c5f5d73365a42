"""Reconcile: at start, make LIO and the session records agree with the overlays on disk, repairing work a
crash left half-done; while running, put back the live sessions LIO lost (`targetctl clear`)."""

from __future__ import annotations

import logging
import shutil

from ..shared.errors import BrokerError
from ..shared.identifiers import storage_object_name
from .context import HelperContext, Names, Part
from .state import BootSession
from .store import DamagedMeta, OverlayMeta

log = logging.getLogger(__name__)


class Reconciler(Part):
    def __init__(self, context: HelperContext) -> None:
        super().__init__(context)
        self.unusable: list[str] = []  # what start-up could not use besides session records, for `health`
        self._missing: set[tuple[str, str]] = set()  # live sessions LIO lacked at the last repair_lost

    def reconcile(self) -> None:
        """Make LIO and the session records agree with the overlays on disk, repairing half-done work, in
        that order: what a crash left in the scratch directory, the live sessions (put back), then what LIO
        has that nothing asks for. Call with the lock held."""
        self._remove_leftovers()
        damaged = self.store.damaged()
        self.unusable = [e.message for e in damaged]
        for note in self.unusable:
            log.error("reconcile: %s", note)
        live = self._restore_sessions()
        self._remove_strays(live, damaged)

    def _remove_leftovers(self) -> None:
        """Half-made overlays, half-published versions and publishes interrupted before they became current."""
        for leftover in self.store.tmp.glob("overlay-*"):
            log.warning("reconcile: removing half-made overlay %s", leftover.name)
            try:
                self.backend.discard(leftover)
            except BrokerError as e:  # nothing serves it: kept, and the helper starts
                log.error("reconcile: cannot discard the half-made overlay %s (%s): tried again at the next start",
                          leftover.name, e.message)
                continue
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

    def _restore_sessions(self) -> dict[str, str]:
        """Put back the target and ACL of every recorded session that can be; set aside or forget the rest.
        Returns target IQN -> the initiator of its live session."""
        live: dict[str, str] = {}
        for session in self.book.all():
            if session.image not in self.config.images:
                self.book.set_aside_session(session, f"image {session.image!r} is no longer in the configuration")
                continue
            names = self.context.names(session.image, session.user)
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
                self.unusable.append(note)
                continue
            live[names.target] = session.initiator
        return live

    def _remove_strays(self, live: dict[str, str], damaged: list[DamagedMeta]) -> None:
        """Give every target of ours the attributes it must have; remove the NodeACLs no live session owns
        and the targets whose overlay is gone."""
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
        self.context.export(names, meta)
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
        with self.context.lock:
            self.lio.forget()
            for session in self.book.all():  # again under the lock: a login may have been half-way
                names = self.context.names(session.image, session.user)
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
