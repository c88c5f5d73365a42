"""A workstation for the lab: a qemu VM that netboots Debian 12's iPXE (the ipxe-qemu NIC ROM).

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
from pathlib import Path

from lab.vm import Lab

CLIENT_SIDE = "10.0.2.100"  # where the client VM finds the broker (port 8080) and iSCSI (port 3260)
GUESTFWD = Path(__file__).with_name("guestfwd.py")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b.")
KEYS = {"-": "minus", ".": "dot", " ": "spc", "_": "shift-minus", "@": "shift-2", "/": "slash"}


class IpxeClient:
    def __init__(self, lab: Lab, name: str = "client") -> None:
        self.lab = lab
        self.dir = lab.work_dir / name
        self.console = self.dir / "console.log"
        self.monitor = self.dir / "monitor.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self, bootfile: str) -> list[str]:
        forwards = [
            f"guestfwd=tcp:{CLIENT_SIDE}:{guest}-cmd:{sys.executable} {GUESTFWD} {host}"
            for guest, host in ((8080, self.lab.http_port), (3260, self.lab.iscsi_port))
        ]
        return [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-machine", "pc,graphics=off",
            "-display", "none", "-serial", f"file:{self.console}",
            "-monitor", f"unix:{self.monitor},server,nowait",
            "-netdev", ",".join(["user,id=net0,restrict=on", f"bootfile={bootfile}", *forwards]),
            "-device", "virtio-net-pci,netdev=net0", "-boot", "n", "-no-reboot",
        ]

    def start(self, bootfile: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console.write_bytes(b"")
        self.process = subprocess.Popen(self.argv(bootfile), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=(self.dir / "qemu.log").open("wb"))

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def screen(self) -> str:
        """What the console printed so far, without terminal escape sequences."""
        return ANSI.sub("", self.console.read_bytes().decode(errors="replace")).replace("\r", "\n")

    def wait_for(self, text: str, timeout: float = 120, after: int = 0) -> int:
        """Wait until `text` appears on the console after position `after`; returns where it ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
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
