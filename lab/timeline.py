"""When each phase of a workstation's boot showed on its console, watched while it boots.

The console is a file with no time stamps (SeaBIOS, iPXE and GRUB print none), so a thread reads it every
quarter second and notes the first time each milestone's text appears after a given position.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

POLL = 0.25  # seconds

# From choosing the disk in the broker's menu to the OS's marker line (lab/os-customize), in order.
OS_BOOT = (
    ("iPXE logged in", "Registered SAN device 0x80"),
    ("bootloader", "GNU GRUB"),
    ("kernel and initrd read", "Linux version"),
    ("initramfs logged in", "iSCSI Initiator over TCP/IP"),
    ("root mounted", "EXT4-fs (sda3): mounted"),
    ("multi-user", "lab-os: multi-user reached"),
)
# A netroot boot from choosing the disk: iPXE loads the version's kernel and initrd from the broker over
# HTTP (no bootloader), and the kernel's initramfs (dracut) logs in with netroot='s credentials.
NETROOT_BOOT = (
    ("kernel and initrd read", "Linux version"),
    ("initramfs logged in", "iSCSI Initiator over TCP/IP"),
    ("root mounted", "EXT4-fs (sda3): mounted"),
    ("multi-user", "lab-os: multi-user reached"),
)
# The same image from the workstation's own (virtio) disk, from power-on: the baseline of OS_BOOT.
LOCAL_BOOT = (
    ("bootloader", "GNU GRUB"),
    ("kernel and initrd read", "Linux version"),
    ("root mounted", "EXT4-fs (vda3): mounted"),
    ("multi-user", "lab-os: multi-user reached"),
)


class Timeline:
    """Seconds from start() to the first appearance of each milestone on `screen()` after `after`."""

    def __init__(self, screen: Callable[[], str], milestones: Sequence[tuple[str, str]] = OS_BOOT,
                 after: int = 0) -> None:
        self.screen = screen
        self.milestones = tuple(milestones)
        self.after = after
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._began = 0.0

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._look()  # what showed since the last look (the milestone the caller waited for, often)

    def _watch(self) -> None:
        while not self._stop.is_set() and len(self.seen) < len(self.milestones):
            self._look()
            self._stop.wait(POLL)

    def _look(self) -> None:
        screen, now = self.screen(), time.monotonic()
        for name, text in self.milestones:
            if name not in self.seen and screen.find(text, self.after) >= 0:
                self.seen[name] = now - self._began

    def phases(self) -> list[tuple[str, float, float]]:
        """(milestone, seconds since start, seconds since the previous milestone seen) in order."""
        rows, previous = [], 0.0
        for name, _ in self.milestones:
            if name in self.seen:
                rows.append((name, self.seen[name], self.seen[name] - previous))
                previous = self.seen[name]
        return rows

    def between(self, first: str, last: str) -> float | None:
        """Seconds from milestone `first` to milestone `last`, if both were seen."""
        if first in self.seen and last in self.seen:
            return self.seen[last] - self.seen[first]
        return None

    def table(self, title: str) -> str:
        lines = [title] + [f"  {name:24} {at:7.1f} s  (+{step:.1f} s)" for name, at, step in self.phases()]
        return "\n".join(lines)
