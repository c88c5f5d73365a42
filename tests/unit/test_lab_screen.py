"""The lab's reading of a workstation's serial console (lab/ipxe_client.py), on a captured sample."""

from __future__ import annotations

from pathlib import Path

from lab.ipxe_client import IpxeClient

# Pieces of a real capture of Debian 12's iPXE and the golden image's SYSLINUX on the serial console.
CONSOLE = (
    b"\x1b[0;1miPXE 1.0.0+git-20190125.36a4c85-5.1\x1b[0m -- Open Source Network Boot Firmware\r\n"
    b"Press Ctrl-B for the iPXE command line...\x08 \x08\x08 \x08net0: using virtio-net (open)\r\n"
    b"\x1b[1;1Hbootbroker: log in\x1b[3;5H       Log in          \x1b[4;5H      Boot the local disk       (10)"
    b"\x1b[4;5H      Boot the local disk       (9)\x1b[3;5H       Log in\r\n"
    b"Username:\x1b[2;1HPassword:\r\n"
    b"s______________st_____________stu____________*______________**_____________\r\n"
    b"student1: choose your disk\x1b[3;5H      Demo disk        (10)\x1b[4;5H      Second image\r\n"
    b"mark of student1\r\n\r\n"
    b"boot:boot:  ooffff\r\n"
)


def transcript(tmp_path: Path) -> list[str]:
    client = IpxeClient.__new__(IpxeClient)  # no lab: only its console file
    client.console = tmp_path / "console.log"
    client.console.write_bytes(CONSOLE)
    return client.transcript(0)


def test_the_transcript_reads_as_the_screen_does(tmp_path: Path) -> None:
    assert transcript(tmp_path) == [
        "iPXE 1.0.0+git-20190125.36a4c85-5.1 -- Open Source Network Boot Firmware",
        "Press Ctrl-B for the iPXE command line..net0: using virtio-net (open)",
        "bootbroker: log in | Log in | Boot the local disk",
        "[the login form: Username, Password]",
        "[typed: Username stu, Password ********]",
        "student1: choose your disk | Demo disk | Second image",
        "mark of student1",
        "boot: off",
    ]


def test_uefi_firmwares_mode_sequences_are_not_shown(tmp_path: Path) -> None:
    client = IpxeClient.__new__(IpxeClient)
    client.console = tmp_path / "console.log"
    client.console.write_bytes(b"\x1b[=3h\x1b[=3h\x1b[=3hiPXE 1.0.0 -- Open Source Network Boot Firmware\r\n")
    assert client.transcript(0) == ["iPXE 1.0.0 -- Open Source Network Boot Firmware"]
