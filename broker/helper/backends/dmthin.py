"""dm-thin backend: every overlay a thin volume in one thin pool in the store, over its golden version as an
*external origin* that all overlays of that version read through one read-only buffered loop device.

So in a boot storm each golden block is read from the store's disk once and cached once, however many users
boot (reflink clones are separate inodes, each cached on its own: N users read and cache N copies). A thin
volume holds only the 64 KiB blocks its user wrote, copied from the origin on the first write to each; it
has no size limit of its own, but all overlays share the pool: [store] min_free_percent stops new overlays
before it is full (`room`), and `fill_percent` is the pool's fill level for the warning in the log.

The pool is two files in `<store>/pool/`, allocated when the pool is made ([store] pool_percent of the
store's filesystem): data, and metadata (the kernel commits it atomically at every flush the initiators
send). They are attached with direct I/O, so the pool's own writes do not fill the page cache, and the pool
is activated by `probe` at every start. Each overlay's directory holds the number of its thin volume
(`thin-id`); the pool's next free number is kept in `<store>/pool/next-id`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Literal

from ...shared.config import BackendKind
from ...shared.errors import BackendFailure, StoreFull
from ...shared.files import write_atomically
from ...shared.identifiers import storage_object_name
from . import devicemapper as dm
from . import run_tool

log = logging.getLogger(__name__)

THIN_ID = "thin-id"
USED = "used-bytes"  # a detached overlay's share of the pool, noted when it was detached
DATA, METADATA, NEXT_ID = "data", "metadata", "next-id"
BLOCK = 64 * 1024  # the pool's block: the unit of copy-on-write and of allocation (dm-thin's smallest)
SECTOR = 512
MAX_THIN_ID = 2**24 - 1


def pool_name(store_pool: Path) -> str:
    """The pool's dm name: one per store, so a second store on the same host (the lab's) has its own."""
    return "bb-pool-" + hashlib.sha256(str(store_pool.resolve()).encode()).hexdigest()[:12]


def metadata_bytes(data_bytes: int) -> int:
    """Room for the pool's mappings: twice lvm's estimate (64 bytes a block), 16 MiB to 15.8 GiB (the most
    dm-thin uses)."""
    return min(max(data_bytes // BLOCK * 128, 16 * 2**20), 15 * 2**30 + 800 * 2**20) // 4096 * 4096


def pool_blocks(status: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(used, total) metadata blocks and (used, total) data blocks from `dmsetup status` of a thin-pool
    ("0 2048 thin-pool 1 88/4096 10/16 - rw ..."); None when it has no such figures (failed, or another
    target)."""
    fields = status.split()
    if fields[2:3] != ["thin-pool"] or len(fields) < 6:
        return None
    pairs = []
    for field in fields[4:6]:
        used, _, total = field.partition("/")
        if not (used.isdigit() and total.isdigit()):
            return None
        pairs.append((int(used), int(total)))
    return pairs[0], pairs[1]


def pool_fill(status: str) -> float | None:
    """The pool's fill level, the fuller of data and metadata, from `dmsetup status` of a thin-pool:
    "0 2048 thin-pool 1 88/4096 10/16 - rw ..." is 62.5 %; a pool out of space, read-only or failed is 100;
    anything else None."""
    fields = status.split()
    if fields[2:3] != ["thin-pool"] or len(fields) < 4:
        return None
    if fields[3] == "Fail" or (len(fields) > 7 and fields[7] in ("out_of_data_space", "ro")):
        return 100.0
    blocks = pool_blocks(status)
    if blocks is None or 0 in (blocks[0][1], blocks[1][1]):
        return None
    return max(100.0 * used / total for used, total in blocks)


def thin_mapped_bytes(status: str) -> int | None:
    """The bytes a thin volume has mapped, from `dmsetup status`: "0 2048 thin 256 2047" is 131072."""
    fields = status.split()
    if fields[2:3] != ["thin"] or len(fields) < 4 or not fields[3].isdigit():
        return None
    return int(fields[3]) * SECTOR


class DmThinBackend:
    kind = BackendKind.DM_THIN
    backstore: Literal["fileio", "block"] = "block"
    fill_advice = ("that is the thin pool every overlay shares: at 100% every user's writes fail; free room "
                   "in the store (let backups expire, retire image versions, reset unused overlays)")

    def __init__(self, directory: Path, pool_percent: int) -> None:
        self.directory = directory
        self.pool_percent = pool_percent
        self.pool = pool_name(directory)

    @property
    def pool_device(self) -> Path:
        return dm.MAPPER / self.pool

    def probe(self, scratch: Path) -> None:
        """Prove the kernel has dm-thin and loop devices, then make the pool if the store has none and
        activate it (at every start: after a reboot it is gone)."""
        dm.require_target("thin-pool", "dm-thin-pool")
        dm.probe_loop(scratch)
        self._activate()

    def _activate(self) -> None:
        if dm.exists(self.pool):
            return
        data, metadata = self.directory / DATA, self.directory / METADATA
        if not data.exists() and not metadata.exists():
            self._make_pool_files(data, metadata)
        elif not (data.exists() and metadata.exists()):
            raise BackendFailure(f"the thin pool in {self.directory} has lost its {DATA if not data.exists() else METADATA} "
                                 "file: its overlays cannot be read; restore it from a backup of the store")
        # direct I/O: the pool's own writes must not fill the page cache
        loops = [dm.loop_for(path, read_only=False, direct_io=True) for path in (metadata, data)]
        sectors = data.stat().st_size // SECTOR
        low_water = sectors * SECTOR // BLOCK // 20  # a dm event at 95% full (the helper's own checks come first)
        try:
            dm.create(self.pool, f"0 {sectors} thin-pool {loops[0]} {loops[1]} {BLOCK // SECTOR} {low_water}")
        except BackendFailure as e:
            for loop in loops:
                dm.detach_loop(loop)
            raise BackendFailure(f"cannot activate the thin pool in {self.directory}: {e.message}") from None
        log.info("thin pool %s active (%s)", self.pool, self.directory)

    def _make_pool_files(self, data: Path, metadata: Path) -> None:
        """Data: `pool_percent` of the store's filesystem, allocated now (a pool over a sparse file would fail
        every overlay at once when the filesystem filled; a pool of its own size fills gracefully, watched by
        `room` and `fill_percent`). Metadata: sized for it; zeroed, it is a new pool."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        fs = os.statvfs(self.directory)
        size = fs.f_blocks * fs.f_frsize * self.pool_percent // 100 // BLOCK * BLOCK
        try:
            for path, length in ((metadata, metadata_bytes(size)), (data, size)):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                run_tool(["fallocate", "--length", str(length), str(path)], timeout=600)
        except BackendFailure as e:
            data.unlink(missing_ok=True)
            metadata.unlink(missing_ok=True)
            raise BackendFailure(f"cannot make a thin pool of {size / 2**30:.1f} GiB ([store] pool_percent = "
                                 f"{self.pool_percent}) in {self.directory}: {e.message}") from None
        write_atomically(self.directory / NEXT_ID, b"1\n", 0o600)
        log.info("new thin pool in %s: %.1f GiB of data, %.0f MiB of metadata", self.directory, size / 2**30,
                 metadata_bytes(size) / 2**20)

    def create(self, golden: Path, work: Path) -> None:
        number = self._next_id()
        write_atomically(work / THIN_ID, f"{number}\n".encode(), 0o600)
        try:
            self._message(f"create_thin {number}")
        except BackendFailure as e:
            if "No space" in e.message:
                raise StoreFull(f"the thin pool is full: no overlay was made ({e.message})") from None
            raise

    def _next_id(self) -> int:
        """The next thin volume number, noted as taken (durably) before it is used: a crash leaves a gap."""
        path = self.directory / NEXT_ID
        try:
            number = int(path.read_text())
        except (OSError, ValueError) as e:
            raise BackendFailure(f"cannot read {path}: {e}") from None
        if number > MAX_THIN_ID:
            raise BackendFailure(f"the thin pool in {self.directory} has used every volume number")
        write_atomically(path, f"{number + 1}\n".encode(), 0o600)
        return number

    def _message(self, message: str) -> None:
        run_tool(["dmsetup", "message", self.pool, "0", message])

    @staticmethod
    def _thin_id(overlay: Path) -> int:
        try:
            return int((overlay / THIN_ID).read_text())
        except (OSError, ValueError) as e:
            raise BackendFailure(f"the overlay {overlay} has no readable {THIN_ID}: {e}") from None

    def _uuid(self, number: int) -> str:
        """The dm UUID of thin volume `number` of this store's pool: a device of the overlay's name is only
        taken for the overlay's when it carries it."""
        return f"{self.pool}-{number}"

    def attach(self, golden: Path, overlay: Path, name: str) -> Path:
        number = self._thin_id(overlay)
        if dm.exists(name, self._uuid(number)):
            return dm.MAPPER / name
        if dm.exists(name):
            raise BackendFailure(f"a device-mapper device {name} exists that is not this overlay's thin volume "
                                 f"(left by another store or program?): remove it (dmsetup remove {name})")
        # the version's one buffered loop device: its page cache is the one every overlay of it reads through
        origin = dm.loop_for(golden, read_only=True, direct_io=False)
        sectors = golden.stat().st_size // SECTOR
        try:
            device = dm.create(name, f"0 {sectors} thin {self.pool_device} {number} {origin}", self._uuid(number))
        except BackendFailure:
            self._release_origin(origin)
            raise
        (overlay / USED).unlink(missing_ok=True)  # attached: `used_bytes` asks the kernel
        return device

    @staticmethod
    def _release_origin(loop: str) -> None:
        """Detach an origin loop device no overlay uses any more."""
        holders = Path("/sys/block") / Path(loop).name / "holders"
        if not any(holders.iterdir()):
            dm.detach_loop(loop)

    def _attached(self, overlay: Path, name: str) -> bool:
        """Whether the device `name` is attached and is this overlay's thin volume (FileNotFoundError: the
        overlay is gone)."""
        number = (overlay / THIN_ID).read_text().strip()
        return number.isdigit() and dm.exists(name, self._uuid(int(number)))

    def detach(self, overlay: Path, name: str) -> None:
        try:
            if not self._attached(overlay, name):
                return  # not attached, or the device of that name is not this overlay's
        except FileNotFoundError:
            return
        used = thin_mapped_bytes(run_tool(["dmsetup", "status", name]))
        if used is not None:
            write_atomically(overlay / USED, f"{used}\n".encode(), 0o600)
        for loop in dm.remove(name):
            self._release_origin(loop)

    def discard(self, overlay: Path) -> None:
        try:
            number = self._thin_id(overlay)
        except BackendFailure:
            return  # made before its volume was (a crash in `create`): nothing in the pool
        try:
            self._message(f"delete {number}")
        except BackendFailure as e:
            if "No data available" not in e.message:  # ENODATA: deleted already
                raise
        (overlay / THIN_ID).unlink()

    def used_bytes(self, overlay: Path) -> int:
        try:
            return int((overlay / USED).read_text())  # detached: noted then
        except FileNotFoundError:
            pass
        except ValueError:
            return 0
        name = storage_object_name(overlay.parent.name, overlay.name)
        if self._attached(overlay, name):  # FileNotFoundError when the overlay is gone
            used = thin_mapped_bytes(run_tool(["dmsetup", "status", name]))
            if used is not None:
                return used
        return 0  # never attached since it was made

    def materialize(self, golden: Path, overlay: Path, name: str, destination: Path) -> None:
        dm.materialize(self, golden, overlay, name, destination)

    def fill_percent(self, name: str) -> float | None:
        return self._pool_fill()

    def _pool_fill(self) -> float | None:
        if not dm.exists(self.pool):
            return None
        return pool_fill(run_tool(["dmsetup", "status", self.pool]))

    def room(self) -> tuple[str, int, int] | None:
        if not dm.exists(self.pool):
            return None
        status = run_tool(["dmsetup", "status", self.pool])
        blocks = pool_blocks(status)
        if blocks is None:
            raise BackendFailure(f"the thin pool {self.pool} is not usable: {' '.join(status.split()[3:])}")
        used, total = blocks[1]
        return "the thin pool", (total - used) * BLOCK, total * BLOCK
