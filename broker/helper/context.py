"""What every part of the helper works on: the three sources of truth (overlays in the store, targets in LIO,
live sessions in the session book), the storage backend, and the one lock that serialises their changes.

The parts (`sessions`, `versions`, `helpdesk`, `reconcile`) share one `HelperContext`; the steps more than one
of them takes (deriving names, exporting an overlay, ending a session) are here, once.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field
from typing import Protocol

from ..shared.config import Config
from ..shared.errors import BackendFailure, BrokerError, Conflict, StoreFull, UnknownImage
from ..shared.identifiers import check_image_name, check_user_name, storage_object_name, user_label
from .backends import Backend
from .lio import Lio
from .state import BootSession, SessionBook
from .store import OverlayMeta, Store


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


@dataclass
class HelperContext:
    config: Config
    directory: Directory
    store: Store
    backend: Backend
    lio: Lio
    book: SessionBook
    # Held for every change to the overlays, LIO or the session book; reads that may show a moment-old state
    # (listings, health) go without it so that they answer during long work.
    lock: threading.Lock = field(default_factory=threading.Lock)
    publishing: set[tuple[str, str]] = field(default_factory=set)  # (image, user) whose overlay is being copied

    def names(self, image: object, user: object) -> Names:
        """Check an (image, user) pair from a request and derive its label, target and storage object.
        Raises BadIdentifier, or UnknownImage for an image the configuration does not name."""
        image = check_image_name(image)
        user = check_user_name(user)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r}")
        label = user_label(user)
        return Names(image, user, label, self.config.iscsi.iqn.target(image, label), storage_object_name(image, label))

    def export(self, names: Names, meta: OverlayMeta) -> None:
        """Attach the overlay through the backend and make its target if missing. Idempotent. Call with the
        lock held."""
        overlay = self.store.overlay_dir(names.image, names.label)
        golden = self.store.image_file(names.image, meta.version)
        device = self.backend.attach(golden, overlay, names.storage_object)
        self.lio.ensure_target(names.target, names.storage_object, self.backend.backstore, device)

    def end(self, names: Names, session: BootSession) -> None:
        """Delete the session's ACL (the kernel drops its connection), then its record. Call with the lock held."""
        self.lio.delete_acl(names.target, session.initiator)
        self.book.remove(names.image, names.user)

    def check_not_publishing(self, names: Names) -> None:
        """Refuse (Conflict) to use or change an overlay while `versions` copies it into a new version."""
        if (names.image, names.user) in self.publishing:
            raise Conflict(f"the overlay of {names.user} on {names.image} is being published as a new version: "
                           "it cannot be used or changed until that is done; try again in a few minutes")


def store_error(e: OSError, doing: str = "make the overlay") -> BrokerError:
    """An OSError from the store, as an answer: StoreFull when the filesystem ran out of room."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"the store ran out of room (could not {doing}: {e.strerror}); nothing was changed")
    return BackendFailure(f"cannot {doing}: {e.strerror or e}")


class Part:
    """One part of the helper's operations, with the context's objects at hand."""

    def __init__(self, context: HelperContext) -> None:
        self.context = context
        self.config = context.config
        self.store = context.store
        self.backend = context.backend
        self.lio = context.lio
        self.book = context.book
