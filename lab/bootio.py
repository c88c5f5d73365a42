"""One boot's disk I/O as the workstation's disk saw it, recorded for the boot-storm benchmarks to replay.

qemu traces every request its virtio disk gets (the `virtio_blk_handle_read` and `_write` events: sector and
count, in the order the guest sent them), from the firmware's first read to the OS's own. `BootIo` turns the
trace into a fio iolog (version 2: `fio --read_iolog=FILE` replays it against any device or file of the
image's size) and into the boot's working set: requests, bytes, and the distinct bytes read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from benchmarks.boot_replay import covered  # how a boot's working set is counted, here and in the replay

SECTOR = 512
EVENTS = "virtio_blk_handle_*"  # virtio_blk_handle_read and virtio_blk_handle_write
REQUEST = re.compile(r"virtio_blk_handle_(read|write) vdev \S+ req \S+ sector (\d+) nsectors (\d+)")


def qemu_args(trace: Path) -> list[str]:
    """qemu options that write the virtio disk's requests to `trace`."""
    return ["-trace", f"enable={EVENTS},file={trace}"]


@dataclass(frozen=True)
class BootIo:
    requests: tuple[tuple[str, int, int], ...]  # ("read" or "write", offset, length) in bytes, in order

    @classmethod
    def parse(cls, trace: str) -> BootIo:
        return cls(tuple((m[1], int(m[2]) * SECTOR, int(m[3]) * SECTOR) for m in REQUEST.finditer(trace)))

    def iolog(self, name: str = "disk") -> str:
        """fio's iolog version 2, the requests against the file or device `name` (fio's --replay_redirect
        points it elsewhere)."""
        lines = ["fio version 2 iolog", f"{name} add", f"{name} open"]
        lines += [f"{name} {op} {offset} {length}" for op, offset, length in self.requests]
        lines.append(f"{name} close")
        return "\n".join(lines) + "\n"

    def summary(self) -> dict[str, int]:
        reads = [(offset, length) for op, offset, length in self.requests if op == "read"]
        writes = [(offset, length) for op, offset, length in self.requests if op == "write"]
        return {
            "reads": len(reads), "bytes_read": sum(length for _, length in reads),
            "distinct_bytes_read": covered(reads),
            "writes": len(writes), "bytes_written": sum(length for _, length in writes),
            "distinct_bytes_written": covered(writes),
        }
