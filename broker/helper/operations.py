"""The helper's operations: every root-only change, on validated identifiers, under one lock.

`Helper` is the use-case layer of the privileged daemon: it derives every path and name itself, keeps the
three sources of truth in step (overlays on disk, targets in LIO, live sessions in the session records), and
repairs half-done work at start. Its operations live in four parts that share one `HelperContext` (and its
lock): `sessions` (logins), `versions` (publishing and retiring images), `helpdesk` (reset, rebase, restore)
and `reconcile` (start-up and LIO's losses). The socket server in `server` decides who may call what; this
layer trusts its caller and checks only the arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..shared.config import Config
from ..shared.errors import BackendFailure
from .backends import Backend, made_by
from .context import Directory, HelperContext, Part
from .helpdesk import Helpdesk
from .lio import Lio
from .reconcile import Reconciler
from .sessions import BootSessions
from .state import SessionBook
from .store import Store
from .versions import ImageVersions


class Helper(Part):
    def __init__(self, config: Config, backend: Backend, lio: Lio, directory: Directory) -> None:
        super().__init__(HelperContext(config, directory, Store(config.store.path), backend, lio,
                                       SessionBook(config.store.sessions_dir)))
        self.directory, self._lock = directory, self.context.lock
        self.boot_sessions = BootSessions(self.context)
        self.versions = ImageVersions(self.context)
        self.helpdesk = Helpdesk(self.context)
        self.reconciler = Reconciler(self.context)
        # The operations, by the names the protocol gives them (run_operation).
        self.ensure_session = self.boot_sessions.ensure_session
        self.end_session = self.boot_sessions.end_session
        self.sessions = self.boot_sessions.sessions
        self.publish = self.versions.publish
        self.publish_overlay = self.versions.publish_overlay
        self.set_current = self.versions.set_current
        self.retire = self.versions.retire
        self.images = self.versions.images
        self.published = self.versions.published
        self.boot_file = self.versions.boot_file
        self.reset = self.helpdesk.reset
        self.rebase = self.helpdesk.rebase
        self.restore = self.helpdesk.restore
        self.backups = self.helpdesk.backups
        self.repair_lost = self.reconciler.repair_lost

    def start(self) -> None:
        """Prove the store, backend and LIO work, then reconcile. Raises BrokerError saying what to fix."""
        try:
            self.store.prepare()
            problem = self.store.unsafe_directory()
        except OSError as e:
            raise BackendFailure(str(e)) from None
        if problem:
            raise BackendFailure(f"[store] path: {problem}")
        self._check_made_with()
        self.backend.probe(self.store.tmp)
        self.lio.check()
        with self._lock:
            self.book.load()
            self.reconciler.reconcile()
            self.helpdesk.expire_backups()

    def _check_made_with(self) -> None:
        """Refuse to start on a store whose overlays another backend made (a changed [store] backend, or a
        configuration that relied on an older default): each backend reads only its own overlays. A store
        from before the mark existed is judged by its overlays' files."""
        configured = self.backend.kind.value
        made_with = self.store.made_with()
        if made_with is None:
            some = self.store.some_overlay()
            found = made_by(some) if some is not None else None
            made_with = found.value if found is not None else configured
        if made_with != configured:
            raise BackendFailure(
                f"the store at {self.store.root} holds overlays made with the {made_with} backend, but [store] "
                f"backend is {configured!r}: set backend = \"{made_with}\" (a store's overlays cannot change backend; "
                "use a new store for another)")
        self.store.mark_made_with(configured)

    def health(self) -> dict[str, Any]:
        """A cheap summary for monitoring. Reads only; takes no lock so it answers during long work."""
        return {
            "backend": self.backend.kind.value,
            "store_free_bytes": self.store.free_bytes(),
            "sessions": len(self.book),
            "overlays": self.store.count_overlays(),
            "backups": self.store.count_backups(),
            "set_aside": self.book.set_aside + self.reconciler.unusable,
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
