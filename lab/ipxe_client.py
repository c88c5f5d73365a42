"""A workstation for the lab: a qemu VM that netboots from its NIC ROM (Debian 12's ipxe-qemu, or another
build's ROM, such as Debian 13's with HTTPS). Either the ROM's iPXE goes to the broker itself (`start`
with the broker's URL as the DHCP boot file: plain HTTP, Debian 12's iPXE has no HTTPS), or the workstation
boots as a site's do (`pxe_boot`): the firmware's PXE gets an address and a boot file name from DHCP and the
file by TFTP (qemu's own servers), the site's iPXE built by ipxe/build.py, whose embedded script goes on to
the broker over HTTPS.

Its console is on a serial port written to a file (SeaBIOS and iPXE print there with graphics=off); the
test types on its keyboard through the qemu monitor's `sendkey`, as a person would. Its user network is
restricted: the only addresses it reaches are the forwards to the lab's broker and iSCSI ports, which
the scripts it gets must therefore name (`CLIENT_SIDE`).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lab import bootio
from lab.vm import CLIENT_SIDE, Lab
GUESTFWD = Path(__file__).with_name("guestfwd.py")
ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b.")  # OVMF sets modes with "\x1b[=3h"
BACKSPACED = re.compile(r".?\x08")
GAP = re.compile(r"\s{6,}")  # between the items of a menu drawn with cursor moves
FORM_FIELD = re.compile(r"_+")
FORM_LABELS = re.compile(r"Username:?|Password:?")
# iPXE 2.0 draws this hint last; what follows it on the line is the fields redrawn after each key.
FORM_HINT = re.compile(r"Ctrl-X - save changes +Ctrl-C - discard changes")
COUNTDOWN = re.compile(r"\(\d+\)")  # a menu's timeout, redrawn every second
LOGIN_FORM = "Username"  # the login form's first label: "Username:" in 2019's iPXE, "Username" in 2.0's
PROGRESS_EVERY = 20.0  # seconds
KEYS = {"-": "minus", ".": "dot", " ": "spc", "_": "shift-minus", "@": "shift-2", "/": "slash"}


OVMF = Path("/usr/share/ovmf/OVMF.fd")  # Debian's ovmf: UEFI firmware for qemu
# What the DHCP server names as the boot file, by firmware: what ipxe/README.md tells sites to serve.
PXE_FILES = {"bios": "undionly.kpxe", "uefi": "ipxe.efi"}


class IpxeClient:
    """One workstation with the network card `nic`; `rom` replaces its iPXE ROM (Debian 13's virtio ROM
    expects the modern virtio device ID that Debian 12's qemu does not give, so it uses e1000); `capture`
    records its network traffic (pcap). `firmware` is "bios" (SeaBIOS) or "uefi" (OVMF; the NIC's ROM then
    runs iPXE's EFI build); a real OS needs `memory_mb` of 1024 or so. With `local_disk` (a raw image, never
    written: qemu's snapshot mode) it boots that as its own virtio disk instead of the network, for comparison;
    `io_trace` records that disk's requests (lab/bootio.py)."""

    def __init__(self, lab: Lab, name: str = "client", *, nic: str = "virtio-net-pci", rom: Path | None = None,
                 capture: bool = False, firmware: str = "bios", memory_mb: int = 256,
                 local_disk: Path | None = None, io_trace: Path | None = None) -> None:
        self.lab = lab
        self.dir = lab.work_dir / name
        self.console = self.dir / "console.log"
        self.monitor = self.dir / "monitor.sock"
        self.nic = nic
        self.rom = rom
        self.capture = self.dir / "network.pcap" if capture else None
        if firmware not in ("bios", "uefi"):
            raise ValueError(f"firmware {firmware!r}: bios or uefi")
        self.firmware = firmware
        self.memory_mb = memory_mb
        self.local_disk = local_disk
        self.io_trace = io_trace
        self.tftp: Path | None = None  # the TFTP server's root, when the workstation PXE-boots (pxe_boot)
        self.process: subprocess.Popen[bytes] | None = None
        # Called with a line every PROGRESS_EVERY seconds of a long wait (the demo prints it).
        self.progress: Callable[[str], None] | None = None

    def argv(self, bootfile: str) -> list[str]:
        forwards = [
            f"guestfwd=tcp:{CLIENT_SIDE}:{guest}-cmd:{sys.executable} {GUESTFWD} {host}"
            for guest, host in ((8080, self.lab.http_port), (8443, self.lab.broker_port), (3260, self.lab.iscsi_port))
        ]
        nic = f"{self.nic},netdev=net0" + (f",romfile={self.rom}" if self.rom else "")
        if self.local_disk is None:
            boot = ["-device", f"{nic},bootindex=1", "-boot", "n"]
        else:
            boot = ["-device", nic, "-drive", f"if=none,id=disk0,format=raw,snapshot=on,file={self.local_disk}",
                    "-device", "virtio-blk-pci,drive=disk0,bootindex=1"]
            if self.io_trace is not None:
                boot += bootio.qemu_args(self.io_trace)
        dump = ["-object", f"filter-dump,id=dump0,netdev=net0,file={self.capture}"] if self.capture else []
        firmware = ["-bios", str(OVMF)] if self.firmware == "uefi" else []
        return [
            "qemu-system-x86_64", "-accel", "tcg", "-m", str(self.memory_mb), "-machine", "pc,graphics=off", *firmware,
            "-display", "none", "-serial", f"file:{self.console}",
            "-monitor", f"unix:{self.monitor},server,nowait",
            "-netdev", ",".join(["user,id=net0,restrict=on", f"bootfile={bootfile}",
                                 *([f"tftp={self.tftp}"] if self.tftp else []), *forwards]),
            *boot, *dump, "-no-reboot",
        ]

    def start(self, bootfile: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console.write_bytes(b"")
        self.process = subprocess.Popen(self.argv(bootfile), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=(self.dir / "qemu.log").open("wb"))

    def pxe_boot(self, built: Path) -> None:
        """Power on as a site's workstation: PXE, DHCP and TFTP of `built`'s iPXE for this firmware (a
        directory ipxe/build.py wrote), whose embedded script goes on to the broker."""
        self.tftp = built
        self.start(PXE_FILES[self.firmware])

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def screen(self) -> str:
        """What the console printed so far, without terminal escape sequences."""
        return ANSI.sub("", self.console.read_bytes().decode(errors="replace")).replace("\r", "\n")

    def transcript(self, start: int, end: int | None = None) -> list[str]:
        """The screen from `start` to `end` as a person reads it: text lines, a menu's items joined by " | ",
        the login form's redraws as what was typed (the password as iPXE shows it: stars), the serial echo of
        the golden image's prompt undoubled."""
        lines: list[str] = []
        for raw in BACKSPACED.sub("", self.screen()[start:end]).splitlines():
            items = [item for item in GAP.split(COUNTDOWN.sub(" " * 6, raw).strip()) if item]
            line = " | ".join(dict.fromkeys(items))  # a menu redrawn as the selection moves: each item once
            shown = _form(line) if line.startswith(LOGIN_FORM) or "____" in line else [_undoubled(line)]
            for entry in shown:
                if entry and (not lines or lines[-1] != entry):
                    lines.append(entry)
        return lines

    def wait_for(self, text: str, timeout: float = 120, after: int = 0) -> int:
        """Wait until `text` appears on the console after position `after`; returns where it ends."""
        start = time.monotonic()
        deadline, told = start + timeout, start
        while time.monotonic() < deadline:
            if self.progress is not None and time.monotonic() - told >= PROGRESS_EVERY:
                told = time.monotonic()
                self.progress(f"{self.dir.name}: waiting for {text!r} ({told - start:.0f} s)")
            screen = self.screen()
            found = screen.find(text, after)
            if found >= 0:
                return found + len(text)
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{text!r} did not appear within {timeout:.0f} s; the screen ends:\n{self.screen()[-3000:]}")

    def wait_for_exit(self, timeout: float = 120) -> int:
        """Wait for the VM to power itself off; returns qemu's exit status."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def keys(self, *names: str) -> None:
        with socket.socket(socket.AF_UNIX) as monitor:
            monitor.connect(str(self.monitor))
            monitor.settimeout(5)
            monitor.recv(4096)  # the monitor's banner
            for name in names:
                monitor.sendall(f"sendkey {name}\n".encode())
                time.sleep(0.2)

    def type(self, text: str) -> None:
        self.keys(*(KEYS.get(c, f"shift-{c.lower()}" if c.isupper() else c) for c in text))

    # What a person does at the workstation: the broker's entry menu, its login form, its disk menu, and
    # the `boot:` prompt of the lab's golden image (lab/golden.py).

    def choose_log_in(self, after: int = 0) -> int:
        """At the entry menu (its default is the local disk), choose "Log in"; returns where the form starts."""
        at = self.wait_for("Boot the local disk", timeout=180, after=after)
        self.keys("up", "ret")
        return self.wait_for(LOGIN_FORM, after=at)

    def fill_in(self, user: str | None, password: str) -> None:
        """Type the user name (None: keep the one shown) and the password, and send the form."""
        if user is not None:
            self.type(user)
        self.keys("tab")
        self.type(password)
        self.keys("ret")

    def log_in(self, user: str, password: str, after: int = 0) -> int:
        """From the entry menu to the user's disk menu; returns where the menu ends."""
        at = self.choose_log_in(after)
        self.fill_in(user, password)
        return self.wait_for(f"{user}: choose your disk", after=at)

    def boot_first_disk(self, after: int = 0) -> int:
        """At the disk menu, take the default (the first image) and wait for the disk's `boot:` prompt."""
        self.keys("ret")
        at = self.wait_for("Registered SAN device 0x80", after=after)  # the iSCSI login with the script's CHAP
        at = self.wait_for("Booting from SAN device 0x80", after=at)
        return self.wait_for("boot:", after=at)

    def command(self, text: str) -> None:
        """Type a command at the golden image's `boot:` prompt."""
        self.type(text)
        self.keys("ret")


def _form(line: str) -> list[str]:
    """The login form as a person reads it: that it was drawn, with the name it kept from a failed try
    (iPXE 2.0 draws labels, fields and hint, then redraws a field after each key, all on one line; 2019's
    draws its labels on a line of their own and the keys' redraws on the next), and what was typed."""
    shown, kept, keys = [], None, line
    if line.startswith(LOGIN_FORM):
        drawn, *after = FORM_HINT.split(line, 1)
        values = _fields(drawn)
        kept = values[0] if values and "*" not in values[0] else None
        shown.append(f"[the login form: Username, Password{'; the name kept: ' + kept if kept else ''}]")
        keys = after[0] if after else ""  # 2019's: the labels' line has no keys
    typed = [field for field in _fields(keys) if field != kept]
    if typed:
        name = next((field for field in reversed(typed) if "*" not in field), None)
        parts = ([f"Username {name}"] if name else []) + (["Password ********"] if any("*" in f for f in typed) else [])
        shown.append(f"[typed: {', '.join(parts)}]")
    return shown


def _fields(text: str) -> list[str]:
    """The values in a stretch of the form: what is between its fields' underscores, labels left out."""
    return [field.strip() for field in FORM_FIELD.split(FORM_LABELS.sub("_", text)) if field.strip()]


def _undoubled(line: str) -> str:
    """SYSLINUX echoes what is typed at its prompt on two consoles that both reach the serial port: "ooffff"."""
    head, colon, typed = line.rpartition(":") if line.startswith("boot:") else ("", "", line)
    typed = typed.strip()
    if len(typed) >= 2 and len(typed) % 2 == 0 and typed[::2] == typed[1::2]:
        typed = typed[::2]
    return f"boot: {typed}" if colon else typed
