"""A boot storm that reads like real boots, in the lab VM: N kernel iSCSI sessions (open-iscsi), each on its
own user's disk, replay one real OS boot's recorded disk I/O (lab/bootio.py's fio iolog) all at once with fio.

Measured from the kernel: the store disk's sectors read (/sys/block/DISK/stat) against the boot's working set
(the distinct bytes it reads), the page cache it grew (Cached in /proc/meminfo; caches dropped before), the
time until all N finished, and each user's own replay time (fio's per-job runtime). Used by
benchmarks/inside.py (`boots`); needs root, iscsid's tools and the iscsi_tcp module.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IFACE_PREFIX = "bench"  # open-iscsi ifaces bench0..: one per session, each with its user's initiator name
ISCSI = "iscsiadm"


@dataclass(frozen=True)
class Disk:
    """A user's disk as an initiator logs in to it."""

    target: str
    initiator: str
    chap_user: str
    chap_secret: str
    lun: int = 0


def working_set(iolog: Path) -> tuple[int, int, list[tuple[int, int]]]:
    """(distinct bytes read, the disk's size as far as the boot reaches, the read extents) of an iolog."""
    extents, end = [], 0
    for line in iolog.read_text().splitlines()[3:]:
        words = line.split()
        if len(words) == 4 and words[1] in ("read", "write"):
            offset, length = int(words[2]), int(words[3])
            end = max(end, offset + length)
            if words[1] == "read":
                extents.append((offset, length))
    return covered(extents), end, extents


def covered(extents: list[tuple[int, int]]) -> int:
    """How many bytes the (offset, length) extents cover, each byte once."""
    total, end = 0, 0
    for offset, length in sorted(extents):
        start = max(offset, end)
        if offset + length > start:
            total += offset + length - start
        end = max(end, offset + length)
    return total


def make_golden(path: Path, iolog: Path, size: int) -> None:
    """A sparse disk of `size` bytes with random bytes wherever the boot reads (zeros read from a hole would
    cost the store no read at all)."""
    _, end, extents = working_set(iolog)
    assert end <= size, f"the boot reaches byte {end}, beyond {size}"
    rng = random.Random(1)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in extents:
            f.seek(offset)
            f.write(rng.randbytes(length))


def start_iscsid() -> None:
    subprocess.run(["modprobe", "-a", "iscsi_tcp", "sd_mod"], check=True)
    Path("/etc/iscsi").mkdir(exist_ok=True)
    Path("/run/lock/iscsi").mkdir(parents=True, exist_ok=True)
    Path("/etc/iscsi/initiatorname.iscsi").write_text("InitiatorName=iqn.2026-11.org.example.lab:bench-host\n")
    if subprocess.run(["pidof", "iscsid"], capture_output=True).returncode != 0:
        subprocess.run(["iscsid"], check=True)
        time.sleep(1)


def _iscsiadm(*args: str, check: bool = True) -> str:
    done = subprocess.run([ISCSI, *args], capture_output=True, text=True, check=False, timeout=600)
    if check and done.returncode != 0:
        raise RuntimeError(f"iscsiadm {' '.join(args[:4])} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def log_in(portal: str, disks: list[Disk]) -> list[str]:
    """One session per disk, each from an iface of its own (its user's initiator name), all logged in at
    once; their block devices (/dev/sdX), in the order of `disks`."""
    for i, disk in enumerate(disks):
        iface = f"{IFACE_PREFIX}{i}"
        _iscsiadm("-m", "iface", "-I", iface, "-o", "new")
        _iscsiadm("-m", "iface", "-I", iface, "-o", "update", "-n", "iface.initiatorname", "-v", disk.initiator)
        _iscsiadm("-m", "node", "-T", disk.target, "-p", portal, "-I", iface, "-o", "new")
        for name, value in (("node.session.auth.authmethod", "CHAP"), ("node.session.auth.username", disk.chap_user),
                            ("node.session.auth.password", disk.chap_secret), ("node.startup", "manual")):
            _iscsiadm("-m", "node", "-T", disk.target, "-p", portal, "-I", iface, "-o", "update", "-n", name, "-v", value)
    _iscsiadm("-m", "node", "--loginall=all")
    wanted = {(d.target, d.initiator) for d in disks}
    deadline = time.monotonic() + 300
    while True:
        found = _attached()
        if wanted <= set(found) or time.monotonic() > deadline:
            break
        time.sleep(2)
    missing = wanted - set(found)
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(disks)} sessions have no disk, e.g. {sorted(missing)[0]}")
    return [f"/dev/{found[(d.target, d.initiator)]}" for d in disks]


def _attached() -> dict[tuple[str, str], str]:
    """(target, initiator name) -> sdX of every session with a disk attached."""
    found: dict[tuple[str, str], str] = {}
    target = initiator = ""
    for line in _iscsiadm("-m", "session", "-P", "3", check=False).splitlines():
        line = line.strip()
        if line.startswith("Target:"):
            target = line.split()[1]
        elif line.startswith("Iface Initiatorname:"):
            initiator = line.split(":", 1)[1].strip()
        elif m := re.match(r"Attached scsi disk (sd\w+)\s+State: running", line):
            found[(target, initiator)] = m[1]
    return found


def log_out(count: int) -> None:
    _iscsiadm("-m", "node", "--logoutall=all", check=False)
    _iscsiadm("-m", "node", "-o", "delete", check=False)
    for i in range(count):
        _iscsiadm("-m", "iface", "-I", f"{IFACE_PREFIX}{i}", "-o", "delete", check=False)


def sectors_read(disk: str) -> int:
    return int(Path(f"/sys/block/{disk}/stat").read_text().split()[2])


def cached_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no Cached in /proc/meminfo")


def replay(iolog: Path, devices: list[str], store_disk: str) -> dict[str, Any]:
    """Every device replays the boot at once (one fio job each, synchronous requests as the OS's boot mostly
    makes them, O_DIRECT on the initiator's side as no initiator's page cache is shared in a real storm)."""
    with tempfile.NamedTemporaryFile("w", suffix=".fio", delete=False) as job:
        job.write("[global]\nioengine=psync\ndirect=1\nreplay_no_stall=1\n"
                  f"read_iolog={iolog}\n")
        for i, device in enumerate(devices):
            job.write(f"[user{i}]\nreplay_redirect={device}\n")
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    read_before, cached_before = sectors_read(store_disk), cached_bytes()
    started = time.monotonic()
    done = subprocess.run(["fio", "--output-format=json", job.name], capture_output=True, text=True, check=False,
                          timeout=7200)
    seconds = time.monotonic() - started
    os.unlink(job.name)
    if done.returncode != 0:
        raise RuntimeError(f"fio failed: {done.stderr.strip()[-2000:]}")
    jobs = json.loads(done.stdout[done.stdout.index("{"):])["jobs"]
    errors = [j["jobname"] for j in jobs if j.get("error")]
    if errors:
        raise RuntimeError(f"fio jobs {errors[:5]} failed")
    return {
        "seconds_to_last": seconds,
        "per_user_seconds": sorted(j["job_runtime"] / 1000 for j in jobs),
        "store_bytes_read": (sectors_read(store_disk) - read_before) * 512,
        "page_cache_bytes": cached_bytes() - cached_before,
    }


def storm(portal: str, disks: list[Disk], iolog: Path, store_disk: str) -> dict[str, Any]:
    start_iscsid()
    log_out(len(disks))  # none left from an interrupted run
    try:
        devices = log_in(portal, disks)
        return replay(iolog, devices, store_disk)
    finally:
        log_out(len(disks))
