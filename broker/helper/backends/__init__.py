"""Storage backends: how an overlay's disk is made, attached for LIO, and measured.

The only modules that run subprocesses. Commands are argument lists, never a shell, never a secret.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Literal, Protocol

from ...shared.config import StoreConfig, BackendKind
from ...shared.errors import BackendFailure


class Backend(Protocol):
    kind: BackendKind
    #: the LIO backstore type that exports what `attach` returns
    backstore: Literal["fileio", "block"]

    def probe(self, scratch: Path) -> None:
        """Prove the store can do what this backend needs; raise BackendFailure saying what to fix."""

    def create(self, golden: Path, work: Path) -> None:
        """Make the overlay's disk inside the empty directory `work` (renamed into place by the caller)."""

    def attach(self, golden: Path, overlay: Path, name: str) -> Path:
        """Make the overlay exportable; return the file or block device for LIO. Idempotent."""

    def detach(self, overlay: Path, name: str) -> None:
        """Undo `attach`. Idempotent: detaching a detached overlay does nothing."""

    def discard(self, overlay: Path) -> None:
        """Free what the overlay holds outside its directory (dm-thin: its thin volume in the pool), before
        the caller deletes the directory. The overlay must be detached. Idempotent."""

    def used_bytes(self, overlay: Path) -> int:
        """Bytes this overlay holds of its own (not shared with its golden image)."""

    def materialize(self, golden: Path, overlay: Path, name: str, destination: Path) -> None:
        """Write the overlay's whole disk (its golden version with the user's changes) to the new file
        `destination`. The overlay must not be written meanwhile (no initiator logged in)."""

    def fill_percent(self, name: str) -> float | None:
        """How full an attached overlay's fixed-size store of changes is (100: it is lost), or None where
        there is no such limit (reflink) or it is not attached. dm-thin: how full the pool all overlays share is."""

    def room(self) -> tuple[str, int, int] | None:
        """Where overlays grow, if not the store's filesystem (dm-thin: "the thin pool"), with its free and
        total bytes; [store] min_free_percent applies to it instead."""

    #: what a full overlay (fill_percent 100) means, and what to do before, for the warning in the log
    fill_advice: str


def made_by(overlay: Path) -> BackendKind | None:
    """The backend whose file (the one each keeps in an overlay's directory) is in `overlay`, if any."""
    from .dmsnapshot import COW
    from .dmthin import THIN_ID
    from .reflink import DISK

    files = {BackendKind.REFLINK: DISK, BackendKind.DM_SNAPSHOT: COW, BackendKind.DM_THIN: THIN_ID}
    return next((kind for kind, name in files.items() if (overlay / name).exists()), None)


def run_tool(argv: list[str], timeout: float = 60) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BackendFailure(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise BackendFailure(f"{argv[0]} did not finish in {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BackendFailure(f"{' '.join(argv[:2])} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path`, from the longest matching mount point."""
    best, fstype = "", "unknown"
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mount_point = fields[4].replace("\\040", " ")
            sep = fields.index("-")
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, fstype = mount_point, fields[sep + 1]
    return fstype


def make_backend(store: StoreConfig) -> Backend:
    from .dmsnapshot import DmSnapshotBackend
    from .dmthin import DmThinBackend
    from .reflink import ReflinkBackend

    if store.backend is BackendKind.REFLINK:
        return ReflinkBackend()
    if store.backend is BackendKind.DM_THIN:
        return DmThinBackend(store.path / "pool", store.pool_percent)
    return DmSnapshotBackend(cow_percent=store.cow_percent)
