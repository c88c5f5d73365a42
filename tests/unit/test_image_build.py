"""`bootbroker images build`: its options, GRUB's BIOS boot code placed in a file, the system's iSCSI-root
settings, and what a failed build leaves (nothing). The whole build, booted by real workstations, is
proven in the lab (tests/lab/test_real_os.py)."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from broker import cli
from broker.shared.errors import BackendFailure, BadRequest
from broker.images import build, grub


def boot_img() -> bytes:
    """A sector shaped like GRUB's boot.img: a jump over the BPB, and the boot signature."""
    return b"\xeb\x63\x90" + bytes(507) + b"\x55\xaa"


def test_the_mbr_gets_boot_img_told_where_core_img_is_and_keeps_the_partition_table() -> None:
    code = grub.boot_sector(boot_img(), core_lba=2048)
    assert len(code) == 0x1B8  # up to the disk signature: the GPT's protective MBR entry stays
    assert struct.unpack_from("<Q", code, 0x5C)[0] == 2048
    assert code[0x64] == 0xFF  # the drive the BIOS booted from
    assert code[0x66:0x68] == b"\x90\x90"  # no trust in a BIOS's wrong drive number
    assert code[:3] == b"\xeb\x63\x90"


def test_core_img_lists_its_own_remaining_sectors() -> None:
    core = bytes(512) + b"x" * 1000  # diskboot.img's sector and 1000 bytes: 2 more sectors
    placed = grub.placed_core(core, core_lba=2048)
    assert len(placed) == 3 * 512
    assert struct.unpack_from("<QHH", placed, 512 - 12) == (2049, 2, 0x820)
    assert placed[512:1512] == b"x" * 1000


def test_what_is_not_grubs_boot_code_is_refused() -> None:
    with pytest.raises(grub.GrubImageError):
        grub.boot_sector(bytes(512), 2048)
    with pytest.raises(grub.GrubImageError):
        grub.placed_core(bytes(100), 2048)


@pytest.mark.parametrize("change, says", [
    ({"size": 1 << 30}, "too small"),
    ({"packages": ("vim; rm -rf /",)}, "not a Debian package name"),
    ({"hostname": "Lab_PC"}, "--hostname"),
    ({"user": "Root Admin"}, "--user"),
    ({"user_password": "secret"}, "needs --user"),
    ({"root_password": "a:b"}, "one non-empty line"),
    ({"customize": (Path("/nonexistent/script"),)}, "not an executable file"),
    ({"initramfs": "mkinitcpio"}, "--initramfs 'mkinitcpio': choose initramfs-tools or dracut"),
])
def test_bad_options_are_refused_saying_what_to_change(tmp_path: Path, change: dict[str, Any], says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        build.BuildOptions(output=tmp_path / "disk.img", **change)


def test_sizes_as_people_write_them() -> None:
    assert cli._size("4G") == 4 << 30
    assert cli._size("2560m") == 2560 << 20
    assert cli._size("1073741824") == 1 << 30
    for bad in ("4GB", "G", "-1G", "4.5G"):
        with pytest.raises(Exception, match="give a size"):
            cli._size(bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="images build refuses to run as anyone but root")
def test_a_failed_build_says_why_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "mmdebstrap"
    fake.write_text("#!/bin/sh\necho 'E: the mirror answered 404 for bookworm/Release' >&2\nexit 25\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    output = tmp_path / "out" / "disk.img"
    output.parent.mkdir()
    with pytest.raises(BackendFailure, match="mmdebstrap failed"):
        build.build_image(build.BuildOptions(output=output), build.Progress(steps=5, say=lambda line: None))
    assert list(output.parent.iterdir()) == []  # no image, no work directory


@pytest.mark.skipif(os.geteuid() != 0, reason="images build refuses to run as anyone but root")
def test_an_existing_output_is_kept_unless_forced(tmp_path: Path) -> None:
    output = tmp_path / "disk.img"
    output.write_text("a site's image")
    with pytest.raises(BadRequest, match="--force"):
        build.build_image(build.BuildOptions(output=output))
    assert output.read_text() == "a site's image"


def test_the_system_is_set_up_for_an_iscsi_root_and_passwords_go_on_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    (root / "etc/iscsi").mkdir(parents=True)
    (root / "etc/iscsi/iscsid.conf").write_text("node.session.timeo.replacement_timeout = 120\n")
    for platform in build.GRUB_PLATFORMS:
        (root / "usr/lib/grub" / platform).mkdir(parents=True)
        (root / "usr/lib/grub" / platform / "normal.mod").write_text("")
    calls: list[tuple[list[str], str | None]] = []
    monkeypatch.setattr(build, "_run", lambda argv, what, stdin=None, **kw: calls.append((list(argv), stdin)) or "")
    options = build.BuildOptions(output=tmp_path / "disk.img", root_password="r00t-pw", user="teacher",
                                 user_password="t-pw")
    build._configure(options, root, "0b6e0e9e-1111-4222-8333-444455556666")

    assert "UUID=0b6e0e9e-1111-4222-8333-444455556666 / ext4" in (root / "etc/fstab").read_text()
    grub_cfg = (root / "boot/grub/grub.cfg").read_text()
    assert "root=UUID=0b6e0e9e-1111-4222-8333-444455556666" in grub_cfg and "console=ttyS0" in grub_cfg
    iscsid = (root / "etc/iscsi/iscsid.conf").read_text().splitlines()
    assert "#node.session.timeo.replacement_timeout = 120" in iscsid
    assert "node.session.timeo.replacement_timeout = 600" in iscsid
    assert "ISCSI_ROOT_KEEP_ALL_SESSIONS_AT_SHUTDOWN=1" in (root / "etc/default/open-iscsi").read_text()
    assert 'ATTR{recovery_tmo}="600"' in (root / "etc/udev/rules.d/60-bootbroker-iscsi-root.rules").read_text()
    assert (root / "etc/machine-id").read_text() == ""
    assert (root / "boot/grub/i386-pc/normal.mod").exists() and (root / "boot/grub/x86_64-efi/normal.mod").exists()
    assert all("r00t-pw" not in " ".join(argv) and "t-pw" not in " ".join(argv) for argv, _ in calls)
    (chpasswd, stdin), = [(argv, stdin) for argv, stdin in calls if argv[-1] == "chpasswd"]
    assert stdin == "root:r00t-pw\nteacher:t-pw\n"


def test_the_initramfs_carries_an_iscsi_roots_modules_and_no_local_disks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(build, "_run", lambda argv, what, **kw: calls.append(list(argv)) or "")
    build._install(build.BuildOptions(output=tmp_path / "disk.img"), tmp_path, tmp_path / "root")

    (mmdebstrap,) = calls
    assert f"--essential-hook=sync-in {tmp_path / 'early'} /" in mmdebstrap  # in place before the kernel
    early = tmp_path / "early/etc/initramfs-tools"
    assert "MODULES=list" in (early / "conf.d/bootbroker").read_text().splitlines()
    hook = early / "hooks/bootbroker"
    assert hook.stat().st_mode & 0o111
    assert subprocess.run(["sh", "-n", str(hook)]).returncode == 0
    assert subprocess.run([str(hook), "prereqs"], capture_output=True, text=True).stdout == ""
    commands = [line.split() for line in hook.read_text().splitlines() if line and not line.startswith("#")]
    named = {word for command in commands if command[0] in ("manual_add_modules", "copy_modules_dir")
             for word in command[1:]}
    assert {"kernel/drivers/net/ethernet", "virtio_net", "sd_mod", "ext4"} <= named
    assert not any(word.startswith("kernel/drivers/") and word.split("/")[2] in ("scsi", "ata", "block", "md")
                   for word in named)  # not every local disk's drivers: only the few a VM or a PC boots from


def test_a_dracut_image_logs_in_from_the_ibft_or_netroot_with_what_debians_dracut_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(build, "_run", lambda argv, what, **kw: calls.append(list(argv)) or "")
    build._install(build.BuildOptions(output=tmp_path / "disk.img", initramfs="dracut"), tmp_path, tmp_path / "root")

    (mmdebstrap,) = calls
    included = next(a for a in mmdebstrap if a.startswith("--include=")).removeprefix("--include=").split(",")
    assert {"dracut", "dracut-network", "isc-dhcp-client", "open-iscsi"} <= set(included)
    assert "initramfs-tools" not in included  # the two conflict: apt would refuse, or pick one for us
    assert not (tmp_path / "early/etc/initramfs-tools").exists() and not (tmp_path / "early/etc/iscsi").exists()
    conf = (tmp_path / "early/etc/dracut.conf.d/bootbroker.conf").read_text()
    settings = [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert 'hostonly="no"' in settings
    assert 'add_dracutmodules+=" iscsi network-legacy "' in settings
    assert 'omit_dracutmodules+=" systemd-networkd network-manager "' in settings
    assert 'install_items+=" /lib/open-iscsi/startup-checks.sh "' in settings
    shell = subprocess.run(["sh", "-c", f". {tmp_path / 'early/etc/dracut.conf.d/bootbroker.conf'}; echo $hostonly"],
                           capture_output=True, text=True)  # dracut sources it: it must be valid shell
    assert (shell.returncode, shell.stdout) == (0, "no\n")


@pytest.mark.parametrize("initramfs, on_grubs_line", [("initramfs-tools", False), ("dracut", True)])
def test_only_a_dracut_image_is_told_on_grubs_command_line_to_log_in_from_the_ibft(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, initramfs: str, on_grubs_line: bool
) -> None:
    root = tmp_path / "root"
    for platform in build.GRUB_PLATFORMS:
        (root / "usr/lib/grub" / platform).mkdir(parents=True)
    monkeypatch.setattr(build, "_run", lambda argv, what, **kw: "")
    build._configure(build.BuildOptions(output=tmp_path / "disk.img", initramfs=initramfs), root, "0b6e0e9e-1111-4222-8333-444455556666")
    (linux,) = [line for line in (root / "boot/grub/grub.cfg").read_text().splitlines() if line.strip().startswith("linux ")]
    assert ("rd.iscsi.firmware=1" in linux.split()) is on_grubs_line


def test_a_netroot_command_line_names_the_root_asks_for_the_network_and_keeps_the_consoles() -> None:
    line = build.netroot_cmdline("0b6e0e9e-1111-4222-8333-444455556666").split()
    assert line[:3] == ["root=UUID=0b6e0e9e-1111-4222-8333-444455556666", "ro", "ip=dhcp"]
    assert "console=ttyS0,115200n8" in line and "netroot" not in " ".join(line)  # the broker adds netroot=
