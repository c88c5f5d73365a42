"""dm-snapshot backend for filesystems without reflink: a persistent snapshot over two loop devices.

The golden version is attached read-only as the origin, a sparse copy-on-write file holds the user's
changes, and LIO exports the snapshot as a block backstore. A persistent ('P') snapshot keeps its
exceptions in the COW file, so it reattaches intact after a reboot. A full COW file invalidates the
snapshot: `used_bytes` lets admins watch fill levels.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from ...shared.config import BackendKind
from ...shared.errors import BackendFailure, StoreFull
from ..copies import copy_sparse
from . import run_tool

COW = "cow.img"
CHUNK_SECTORS = 8  # 4 KiB chunks: small writes (the common case on a desktop disk) waste least space


class DmSnapshotBackend:
    kind = BackendKind.DM_SNAPSHOT
    backstore: Literal["fileio", "block"] = "block"

    def __init__(self, cow_percent: int) -> None:
        self.cow_percent = cow_percent

    def probe(self, scratch: Path) -> None:
        if "snapshot" not in run_tool(["dmsetup", "targets"]):
            raise BackendFailure("the kernel has no dm-snapshot target; load the dm-snapshot module")
        probe = scratch / "probe-loop"
        try:
            with open(probe, "wb") as f:
                f.truncate(1024 * 1024)
            loop = run_tool(["losetup", "--find", "--show", str(probe)]).strip()
            run_tool(["losetup", "--detach", loop])
        except BackendFailure as e:
            raise BackendFailure(f"loop devices do not work here ({e.message}); load the loop module") from None
        finally:
            probe.unlink(missing_ok=True)

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
        device = Path("/dev/mapper") / name
        if self._exists(name):
            return device
        loops: list[str] = []
        try:
            loops.append(run_tool(["losetup", "--find", "--show", "--read-only", str(golden)]).strip())
            loops.append(run_tool(["losetup", "--find", "--show", str(overlay / COW)]).strip())
            sectors = golden.stat().st_size // 512
            table = f"0 {sectors} snapshot {loops[0]} {loops[1]} P {CHUNK_SECTORS}"
            run_tool(["dmsetup", "create", name, "--table", table])
            # No udev in many helper environments: make the /dev/mapper node ourselves.
            run_tool(["dmsetup", "mknodes", name])
        except BackendFailure:
            if self._exists(name):
                run_tool(["dmsetup", "remove", name])
            for loop in loops:
                run_tool(["losetup", "--detach", loop])
            raise
        return device

    def detach(self, overlay: Path, name: str) -> None:
        if not self._exists(name):
            return
        deps = run_tool(["dmsetup", "deps", "-o", "devname", name])
        run_tool(["dmsetup", "remove", name])
        run_tool(["dmsetup", "mknodes"])
        for loop in re.findall(r"\((loop\d+)\)", deps):
            run_tool(["losetup", "--detach", f"/dev/{loop}"])

    def used_bytes(self, overlay: Path) -> int:
        return (overlay / COW).stat().st_blocks * 512

    def materialize(self, golden: Path, overlay: Path, name: str, destination: Path) -> None:
        was_attached = self._exists(name)
        device = self.attach(golden, overlay, name)
        try:
            copy_sparse(device, destination, golden.stat().st_size)
        except OSError as e:
            raise BackendFailure(f"cannot read the overlay's disk {device}: {e.strerror or e}") from None
        finally:
            if not was_attached:
                self.detach(overlay, name)

    def fill_percent(self, name: str) -> float | None:
        if not self._exists(name):
            return None
        return snapshot_fill(run_tool(["dmsetup", "status", name]))

    @staticmethod
    def _exists(name: str) -> bool:
        """Whether device-mapper has a device `name`. Every login asks (attach, fill level): the common case,
        its /dev/mapper node naming a live dm device of that name, costs a stat and a sysfs read; a missing or
        stale node (no udev here) falls back to asking dmsetup."""
        try:
            node = os.stat(Path("/dev/mapper") / name)
            live = Path(f"/sys/dev/block/{os.major(node.st_rdev)}:{os.minor(node.st_rdev)}/dm/name")
            if live.read_text().strip() == name:
                return True
        except OSError:
            pass
        try:
            run_tool(["dmsetup", "info", "-c", "--noheadings", "-o", "name", name])
        except BackendFailure:
            return False
        return True


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
