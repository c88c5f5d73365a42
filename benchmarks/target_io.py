"""I/O through iSCSI on users' disks against a target of the golden image itself, each way a disk is exported.

`qemu-img bench` (libiscsi, in the lab VM) runs each workload on a disk, 16 requests in flight, the page cache
dropped first. Writes flush every FLUSH_EVERY requests, as an OS's file system commits: with a write cache the
flushes are where the data reaches the disk, so a cache that only defers work cannot look faster than it is.
The figure is MiB over the process's whole time (its iSCSI login, the requests, the flushes and the last flush
when it closes the disk), not qemu-img's "Run completed", which stops before that last flush.

The disks (`Disks`), each paired with the golden target exported the same way:
- reflink clones as fileio backstores, one per FileioCache mode (write-through, the kernel's direct async
  I/O, write-back), against the golden image's plain copy in the same mode;
- the running helper's overlays (dm-thin: a block backstore on the thin volume, which reports the pool's
  write cache), against a block backstore on a loop device of the plain copy;
- mktgt's snapshots through tgtd, against tgtd exporting the plain copy (inside.py makes these).
Writes go to a fresh overlay per sample (first writes: the copy-on-write case); reads repeat on one.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

from broker.helper.backends import devicemapper
from broker.helper.backends.reflink import ReflinkBackend
from broker.helper.lio import FileioCache, Lio
from broker.shared.config import Portal
from timing import say  # benchmarks/timing.py: run as python benchmarks/NAME.py

WORKLOADS = {  # name -> qemu-img bench options: 1 MiB in order, or 4 KiB scattered over the whole disk (see bench)
    "sequential read": ["-s", "1M"],
    "scattered read": ["-s", "4K", "-S", str(4099 * 4096)],  # an odd stride: every 4 KiB block once
    "sequential write": ["-w", "-s", "1M"],
    "scattered write": ["-w", "-s", "4K", "-S", str(4099 * 4096)],
}
SCATTERED = 8192  # 4 KiB requests per scattered run (32 MiB)
FLUSH_EVERY = 64  # write requests between flushes: 64 MiB sequential, 256 KiB scattered
GOLDEN_SECRET = "goldensecret12345"  # the bench's own targets' CHAP secret (a benchmark in a throwaway VM)
PREFIX = "iqn.2026-11.org.example.lab.bench"


class Endpoint(NamedTuple):
    """An iSCSI LUN and the credentials to log in to it."""

    portal: str
    target: str
    lun: int
    chap_user: str
    secret: str
    initiator: str


def bench(at: Endpoint, workload: str, size: int) -> float:
    """MiB/s of one qemu-img bench run over the process's whole time: sequential reads cover the whole disk
    (`size` bytes), sequential writes its first half (mktgt's snapshot cannot take a whole disk's changes: its
    COW file is the disk's size, and the exceptions' metadata needs room too), scattered runs make SCATTERED
    requests. The page cache is dropped first: a clone's pages are not its original's, so whichever file was
    read or written last would otherwise start warm."""
    options = WORKLOADS[workload]
    count = (size // 2**20 // (2 if "-w" in options else 1)) if "1M" in options else SCATTERED
    flushes = ["--flush-interval", str(FLUSH_EVERY)] if "-w" in options else []
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    # qemu-img bench takes no --object secret: the CHAP secret goes in the options (a throwaway VM's argv).
    image = (f"driver=iscsi,transport=tcp,portal={at.portal},target={at.target},lun={at.lun},user={at.chap_user},"
             f"password={at.secret},initiator-name={at.initiator}")
    started = time.monotonic()
    done = subprocess.run(
        ["qemu-img", "bench", "--image-opts", image, "-c", str(count), "-d", "16", "-t", "none", *flushes, *options],
        capture_output=True, text=True, check=False, timeout=1800,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0 or "Run completed" not in done.stdout:
        raise RuntimeError(f"qemu-img bench {workload} on {at.target} failed: {done.stderr.strip() or done.stdout}")
    return count * (2**20 if "1M" in options else 4096) / 2**20 / seconds


def measure(name: str, fresh: Callable[[], Endpoint], size: int, repeat: int) -> dict[str, list[float]]:
    """{workload: [MiB/s...]} of one kind of disk; `fresh` gives a new one (the same one for a golden target)."""
    figures: dict[str, list[float]] = {}
    reader = fresh()
    for workload in WORKLOADS:
        writes = "write" in workload
        figures[workload] = [bench(fresh() if writes else reader, workload, size) for _ in range(repeat)]
        say(f"    {name}, {workload}: {statistics.median(figures[workload]):.1f} MiB/s")
    return figures


class Disks:
    """The bench's own LIO targets on LIO's portal `portal`: the golden image's plain copy (in `work`, on the
    store's filesystem) exported each way, and reflink clones of it; all removed by `close`."""

    def __init__(self, golden: Path, work: Path, portal: str, initiator: str) -> None:
        self.golden = golden
        self.work = work
        self.portal = portal
        self.initiator = initiator
        self.plain = work / "golden-target.img"
        self.made: list[tuple[str, str, Literal["fileio", "block"]]] = []  # (iqn, storage object, backstore)
        self.loops: list[str] = []
        work.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(golden, self.plain)

    def _export(self, label: str, backstore: Literal["fileio", "block"], device: Path, cache: FileioCache) -> Endpoint:
        iqn, so = f"{PREFIX}:{label}", f"bench-{label}"
        lio = Lio([Portal.parse(self.portal)], fileio_cache=cache)
        lio.ensure_target(iqn, so, backstore, device)
        lio.ensure_acl(iqn, self.initiator, "bench", GOLDEN_SECRET)
        self.made.append((iqn, so, backstore))
        return Endpoint(self.portal, iqn, 0, "bench", GOLDEN_SECRET, self.initiator)

    def golden_fileio(self, cache: FileioCache) -> Callable[[], Endpoint]:
        at = self._export(f"golden-{cache.value}", "fileio", self.plain, cache)
        return lambda: at

    def golden_block(self) -> Callable[[], Endpoint]:
        """A block backstore on a loop device of the plain copy: what a site exporting the file as a block
        device gets (the loop device's write cache, flushed on request)."""
        loop = devicemapper.loop_for(self.plain, read_only=False, direct_io=False)
        self.loops.append(loop)
        at = self._export("golden-block", "block", Path(loop), FileioCache.WRITE_THROUGH)
        return lambda: at

    def reflink(self, cache: FileioCache) -> Callable[[], Endpoint]:
        """A fresh reflink clone of the golden image per call, exported as the reflink backend's are."""
        backend = ReflinkBackend()

        def fresh() -> Endpoint:
            overlay = self.work / f"reflink-{cache.value}-{len(self.made)}"
            overlay.mkdir()
            backend.create(self.golden, overlay)
            return self._export(overlay.name, "fileio", backend.attach(self.golden, overlay, overlay.name), cache)

        return fresh

    def close(self) -> None:
        lio = Lio([])
        for iqn, so, backstore in self.made:
            lio.delete_target(iqn, so, backstore)
        for loop in self.loops:
            devicemapper.detach_loop(loop)
        shutil.rmtree(self.work)
