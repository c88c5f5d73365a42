"""Reflink backend: an overlay is a FICLONE copy of its golden version on btrfs or XFS (reflink=1).

A clone shares every extent with the golden file until written, so making one costs time in proportion to
the number of extents, not the size; LIO exports the clone as a fileio backstore.
"""

from __future__ import annotations

import fcntl
import struct
from pathlib import Path
from typing import Literal

from ...shared.config import BackendKind
from ...shared.errors import BackendFailure, StoreFull
from ..copies import clone, clone_or_copy
from . import filesystem_type

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_FIEMAP_HEAD = struct.Struct("=QQLLLL")
_FIEMAP_EXTENT = struct.Struct("=QQQQQLLLL")
_EXTENTS_PER_CALL = 512

DISK = "disk.img"


def exclusive_bytes(path: Path) -> int:
    """Bytes of `path` in extents it does not share with another file (FIEMAP)."""
    total, start = 0, 0
    with open(path, "rb") as f:
        while True:
            request = bytearray(_FIEMAP_HEAD.size + _FIEMAP_EXTENT.size * _EXTENTS_PER_CALL)
            _FIEMAP_HEAD.pack_into(request, 0, start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0, _EXTENTS_PER_CALL, 0)
            fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, request)
            mapped = _FIEMAP_HEAD.unpack_from(request, 0)[3]
            if mapped == 0:
                return total
            for i in range(mapped):
                logical, _, length, _, _, flags, *_ = _FIEMAP_EXTENT.unpack_from(
                    request, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size
                )
                if not flags & FIEMAP_EXTENT_SHARED:
                    total += length
                if flags & FIEMAP_EXTENT_LAST:
                    return total
            start = logical + length


class ReflinkBackend:
    kind = BackendKind.REFLINK
    backstore: Literal["fileio", "block"] = "fileio"

    def probe(self, scratch: Path) -> None:
        source, copy = scratch / "probe-source", scratch / "probe-clone"
        for p in (source, copy):
            p.unlink(missing_ok=True)
        try:
            source.write_bytes(b"bootbroker reflink probe\n" * 4096)
            clone(source, copy)
        except OSError as e:
            fstype = filesystem_type(scratch)
            raise BackendFailure(
                f"the store at {scratch.parent} ({fstype}) cannot make reflink clones ({e.strerror}); "
                "put it on btrfs or on XFS made with reflink=1, or set [store] backend = \"dm-snapshot\""
            ) from None
        finally:
            for p in (source, copy):
                p.unlink(missing_ok=True)

    def create(self, golden: Path, work: Path) -> None:
        try:
            clone(golden, work / DISK)
        except StoreFull:
            raise StoreFull("the store is full; no overlay was made") from None

    def attach(self, golden: Path, overlay: Path, name: str) -> Path:
        return overlay / DISK

    def detach(self, overlay: Path, name: str) -> None:
        pass  # a fileio backstore holds the file itself; nothing else to undo

    def discard(self, overlay: Path) -> None:
        pass  # the clone is in the overlay's directory

    def used_bytes(self, overlay: Path) -> int:
        return exclusive_bytes(overlay / DISK)

    def materialize(self, golden: Path, overlay: Path, name: str, destination: Path) -> None:
        clone_or_copy(overlay / DISK, destination)

    def fill_percent(self, name: str) -> float | None:
        return None  # a clone grows with the filesystem: no per-overlay limit

    def room(self) -> tuple[str, int, int] | None:
        return None  # clones grow in the store's filesystem

    fill_advice = ""  # fill_percent is always None
