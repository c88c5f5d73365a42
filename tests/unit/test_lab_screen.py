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


# iPXE 2.0's login form (a real capture, trimmed): labels, fields and the keys' redraws on one line.
FORM_2 = (
    b"\x1b[2J\x1b[01;01H\x1b[09;37HUsername\x1b[11;21H\x1b[0m\x1b[30m\x1b[46m__________\x1b[11;21H\x1b[14;37H"
    b"\x1b[0m\x1b[37m\x1b[44mPassword\x1b[16;21H\x1b[0m\x1b[30m\x1b[46m__________\x1b[16;21H\x1b[24;16H"
    b"\x1b[0m\x1b[37m\x1b[44mCtrl-X - save changes     Ctrl-C - discard changes\x1b[11;21H\x1b[0m\x1b[30m\x1b[46m"
    b"__________\x1b[11;21Hs_________\x1b[11;22H\x1b[11;21Hst________\x1b[11;23H\x1b[16;21H__________"
    b"\x1b[16;21H*_________\x1b[16;22H\x1b[16;21H**________\x1b[16;23H\r\n"
    b"st: choose your disk\r\n"
)


def test_ipxe_2s_login_form_reads_the_same(tmp_path: Path) -> None:
    client = IpxeClient.__new__(IpxeClient)
    client.console = tmp_path / "console.log"
    client.console.write_bytes(FORM_2)
    assert client.transcript(0) == [
        "[the login form: Username, Password]",
        "[typed: Username st, Password ********]",
        "st: choose your disk",
    ]
    client.console.write_bytes(FORM_2.split(b"\x1b[11;21Hs_")[0] + b"\r\n")  # drawn, nothing typed yet
    assert client.transcript(0) == ["[the login form: Username, Password]"]
    # After a wrong password the form comes back with the name kept (drawn, and redrawn as the cursor
    # goes to it): not something typed. Then only the password is.
    kept = FORM_2.replace(b"__________\x1b[11;21H\x1b[14;37H", b"st________\x1b[11;21H\x1b[14;37H", 1)
    kept = kept.replace(b"\x1b[11;21Hs_________\x1b[11;22H\x1b[11;21Hst________\x1b[11;23H", b"")
    kept = kept.replace(b"changes\x1b[11;21H\x1b[0m\x1b[30m\x1b[46m__________", b"changes\x1b[11;21H\x1b[0m\x1b[30m\x1b[46mst________")
    client.console.write_bytes(kept)
    assert client.transcript(0) == [
        "[the login form: Username, Password; the name kept: st]",
        "[typed: Password ********]",
        "st: choose your disk",
    ]


def test_uefi_firmwares_mode_sequences_are_not_shown(tmp_path: Path) -> None:
    client = IpxeClient.__new__(IpxeClient)
    client.console = tmp_path / "console.log"
    client.console.write_bytes(b"\x1b[=3h\x1b[=3h\x1b[=3hiPXE 1.0.0 -- Open Source Network Boot Firmware\r\n")
    assert client.transcript(0) == ["iPXE 1.0.0 -- Open Source Network Boot Firmware"]
