"""dm-snapshot backend for filesystems without reflink: a persistent snapshot over two loop devices.

The golden version is attached read-only as the origin, a sparse copy-on-write file holds the user's
changes, and LIO exports the snapshot as a block backstore. A persistent ('P') snapshot keeps its
exceptions in the COW file, so it reattaches intact after a reboot. A full COW file invalidates the
snapshot: `used_bytes` lets admins watch fill levels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ...shared.config import BackendKind
from ...shared.errors import BackendFailure, StoreFull
from . import devicemapper as dm
from . import run_tool

COW = "cow.img"
CHUNK_SECTORS = 8  # 4 KiB chunks: small writes (the common case on a desktop disk) waste least space


class DmSnapshotBackend:
    kind = BackendKind.DM_SNAPSHOT
    backstore: Literal["fileio", "block"] = "block"

    def __init__(self, cow_percent: int) -> None:
        self.cow_percent = cow_percent

    def probe(self, scratch: Path) -> None:
        dm.require_target("snapshot", "dm-snapshot")
        dm.probe_loop(scratch)

    def create(self, golden: Path, work: Path) -> None:
        size = golden.stat().st_size * self.cow_percent // 100
        fd = os.open(work / COW, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Sparse: a zeroed header makes the kernel initialise a fresh snapshot on first attach.
            os.ftruncate(fd, size)
        except OSError as e:
            raise StoreFull(f"cannot make the copy-on-write file: {e.strerror}") from None
        finally:
            os.close(fd)

    def attach(self, golden: Path, overlay: Path, name: str) -> Path:
        if dm.exists(name):
            return dm.MAPPER / name
        loops: list[str] = []
        try:
            loops.append(dm.new_loop(golden, "--read-only"))
            loops.append(dm.new_loop(overlay / COW))
            sectors = golden.stat().st_size // 512
            return dm.create(name, f"0 {sectors} snapshot {loops[0]} {loops[1]} P {CHUNK_SECTORS}")
        except BackendFailure:
            for loop in loops:
                dm.detach_loop(loop)
            raise

    def detach(self, overlay: Path, name: str) -> None:
        if dm.exists(name):
            for loop in dm.remove(name):
                dm.detach_loop(loop)

    def discard(self, overlay: Path) -> None:
        pass  # the overlay's directory holds all of it

    def used_bytes(self, overlay: Path) -> int:
        return (overlay / COW).stat().st_blocks * 512

    def materialize(self, golden: Path, overlay: Path, name: str, destination: Path) -> None:
        dm.materialize(self, golden, overlay, name, destination)

    def fill_percent(self, name: str) -> float | None:
        if not dm.exists(name):
            return None
        return snapshot_fill(run_tool(["dmsetup", "status", name]))

    def room(self) -> tuple[str, int, int] | None:
        return None  # COW files grow in the store's filesystem

    fill_advice = ("at 100% it becomes invalid and its changes are lost: reset the user, or raise [store] "
                   "cow_percent for new overlays")


def snapshot_fill(status: str) -> float | None:
    """The COW fill level from `dmsetup status` of a snapshot: "0 65536 snapshot 1024/131072 16" is 0.78 %;
    "Invalid" (the COW file overflowed) is 100; anything else (a merge, an unknown format) is None."""
    fields = status.split()
    if fields[2:3] != ["snapshot"] or len(fields) < 4:
        return None
    if fields[3] == "Invalid":
        return 100.0
    allocated, _, total = fields[3].partition("/")
    if not (allocated.isdigit() and total.isdigit()) or int(total) == 0:
        return None
    return 100.0 * int(allocated) / int(total)
