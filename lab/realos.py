"""The lab's real operating system: Debian 12 built by `bootbroker images build`, as a site builds it.

Built on the host (it reaches Debian's mirror; the lab VM's network reaches nothing) and cached, keyed by
its inputs: the builder's code, the lab's customize script, and the options. The lab VM sees the host's
files at the same paths, so the helper in it publishes the cached file directly.

What the tests read on the workstation's serial console comes from lab/os-customize: once multi-user is
reached, one line with the boot count kept on the disk itself (`MARKER`), and root's shell.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

from broker.images.build import ROOT_START
from lab.build import cache_dir, log
from lab.vm import REPO

CUSTOMIZE = Path(__file__).with_name("os-customize")
BUILDER = ("broker/images/build.py", "broker/images/grub.py")
# A real, sparse disk: about 900 MiB of it is written. No bigger: a publish hashes all of it, holes too (as
# zeros), and over the lab's 9p (which hides holes) reads all of it; under TCG that is minutes per image.
SIZE = "2G"
MARKER = "lab-os: multi-user reached; boot "
HEARTBEAT = re.compile(r"lab-os: heartbeat (\d+)")  # lab/os-customize's unit, every 10 s once written and synced
OS_BOOT = 900.0  # seconds from the disk menu to MARKER under TCG, with room to spare
MARKED = re.compile(r"lab-os: multi-user reached; boot (\d+) of this disk; root (\S+) on iSCSI target (\S+); "
                    r"recovery_tmo (\S+)")


def ensure_os_image(cache: Path | None = None, initramfs: str = "initramfs-tools") -> Path:
    """The built Debian image whose initramfs `initramfs` makes (`images build --initramfs`), from the cache
    or built now (a few minutes, with progress)."""
    cache = cache or cache_dir()
    digest = hashlib.sha256(f"{SIZE} {initramfs}".encode())
    for part in (*(REPO / name for name in BUILDER), CUSTOMIZE):
        digest.update(part.name.encode() + b"\0" + part.read_bytes())
    kind = "debian12" if initramfs == "initramfs-tools" else f"debian12-{initramfs}"
    image = cache / f"{kind}-{digest.hexdigest()[:16]}.img"
    if not image.exists():
        log(f"building the lab's Debian image {image.name} with bootbroker images build (a few minutes)")
        subprocess.run(
            [sys.executable, "-m", "broker.cli", "images", "build", str(image), "--size", SIZE,
             "--hostname", "lab-os", "--customize", str(CUSTOMIZE), "--initramfs", initramfs],
            check=True, cwd=REPO, stdout=sys.stderr,
        )
        for old in cache.glob(f"{kind}-*.img"):
            if old != image and re.fullmatch(rf"{kind}-[0-9a-f]{{16}}\.img", old.name):
                log(f"removing old {old.name}")
                old.unlink()
    return image


def root_uuid(image: Path) -> str:
    """The UUID of a built image's root filesystem (what a netroot image's command line names)."""
    return subprocess.run(
        ["blkid", "--probe", "--offset", str(ROOT_START), "--match-tag", "UUID", "--output", "value", str(image)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def boots(screen: str) -> list[tuple[int, str, str, str]]:
    """Each marker line on a console: (boot count, root device, target IQN, recovery_tmo)."""
    return [(int(m[1]), m[2], m[3], m[4]) for m in MARKED.finditer(screen)]


def heartbeats(screen: str) -> list[int]:
    """The heartbeat counts on a console, in order."""
    return [int(beat) for beat in HEARTBEAT.findall(screen)]
