"""`images check` on small synthetic disk images built here without loop devices or mounts: sfdisk on a
file, mkfs.fat and mtools at an offset, mke2fs -d at an offset, a real cpio initramfs. The good image
mirrors what `images build` makes (GPT: BIOS boot, ESP with BOOTX64.EFI, ext4 root; initramfs-tools with
open-iscsi and ISCSI_AUTO=true); each test breaks one thing in a copy and looks for the finding that says
what to change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.cli import main
from broker.shared.errors import BackendFailure, BadRequest
from broker.images.check import TOOLS, Finding, Level, check_image

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in (*TOOLS, "mkfs.fat", "mcopy", "mke2fs")),
    reason="needs fdisk, mtools, e2fsprogs, initramfs-tools-core, zstd, cpio and dosfstools",
)

MIB = 2**20
BIOS_START, ESP_START, ROOT_START = 1 * MIB, 2 * MIB, 20 * MIB
DISK_SIZE = 48 * MIB
ROOT_UUID = "3c5ae0b5-2b7e-4a0a-9c43-3b8f0c7f5a11"
KERNEL = "6.1.0-18-amd64"
MTOOLS = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}

# What grub-install writes to the first 440 bytes looks like this: a short jump, code, and GRUB's
# messages near the end ("GRUB \0Geom\0Hard Disk\0Read\0 Error").
GRUB_BOOT_CODE = (b"\xebc\x90" + bytes(range(1, 256)) * 2)[:380] + b"GRUB \x00Geom\x00Hard Disk\x00Read\x00 Error\r\n\x00"
GRUB_BOOT_CODE = GRUB_BOOT_CODE.ljust(440, b"\x00")

GOOD_GRUB_CFG = f"""\
set default="0"
search --no-floppy --fs-uuid --set=root {ROOT_UUID}
menuentry 'Debian GNU/Linux' {{
	linux	/boot/vmlinuz-{KERNEL} root=UUID={ROOT_UUID} ro quiet
	initrd	/boot/initrd.img-{KERNEL}
}}
menuentry 'Debian GNU/Linux (recovery mode)' {{
	linux	/boot/vmlinuz-{KERNEL} root=UUID={ROOT_UUID} ro single
	initrd	/boot/initrd.img-{KERNEL}
}}
"""


def run(*argv: str, **kwargs: object) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


def write_at(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def make_cpio(tree: Path) -> bytes:
    names = subprocess.run(["find", "."], cwd=tree, check=True, capture_output=True).stdout
    return subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=tree, input=names, check=True,
                          capture_output=True).stdout


def make_initramfs(dest: Path, files: dict[str, str], compress: str = "zstd") -> None:
    """An early uncompressed archive (as with CPU microcode) followed by the compressed main one."""
    work = dest.parent / (dest.name + ".d")
    early, main_tree = work / "early", work / "main"
    (early / "kernel/x86/microcode").mkdir(parents=True)
    (early / "kernel/x86/microcode/GenuineIntel.bin").write_bytes(b"\x01" * 64)
    for name, text in {"init": "#!/bin/sh\n", "conf/initramfs.conf": "MODULES=most\n", **files}.items():
        (main_tree / name).parent.mkdir(parents=True, exist_ok=True)
        (main_tree / name).write_text(text)
    main_cpio = make_cpio(main_tree)
    packed = subprocess.run([compress, "-c"], input=main_cpio, check=True, capture_output=True).stdout
    dest.write_bytes(make_cpio(early) + packed)
    shutil.rmtree(work)


INITRAMFS_TOOLS = {
    "usr/sbin/iscsistart": "ELF",
    "etc/iscsi.initramfs": "ISCSI_AUTO=true\n",
    "etc/initiatorname.iscsi": "InitiatorName=iqn.1993-08.org.debian:01:golden\n",
    "scripts/local-top/iscsi": "#!/bin/sh\n",
}
DRACUT = {
    "usr/lib/dracut/modules.txt": "base\nnetwork\niscsi\n",
    "usr/lib/dracut/hooks/cmdline/90parse-iscsiroot.sh": "#!/bin/sh\n",
    "usr/sbin/iscsistart": "ELF",
    "etc/cmdline.d/40-iscsi.conf": "rd.iscsi.firmware=1\n",
}


def lay_out_root(root: Path, initramfs: dict[str, str] = INITRAMFS_TOOLS) -> None:
    """The installed system, as `images build` makes it."""
    texts = {
        "etc/fstab": f"# /etc/fstab\nUUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n",
        "boot/grub/grub.cfg": GOOD_GRUB_CFG,
        f"boot/vmlinuz-{KERNEL}": "kernel",
        "etc/iscsi/iscsi.initramfs": "ISCSI_AUTO=true\n",
        "etc/default/open-iscsi": "LVMGROUPS=\"\"\nISCSI_ROOT_KEEP_ALL_SESSIONS_AT_SHUTDOWN=1\n",
        "etc/iscsi/iscsid.conf": "node.startup = manual\nnode.session.timeo.replacement_timeout = 600\n",
        "etc/udev/rules.d/60-bootbroker-iscsi-root.rules": (
            'ACTION=="add|change", SUBSYSTEM=="iscsi_session", ATTR{recovery_tmo}="600"\n'),
    }
    for name, text in texts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    set_initramfs(root, initramfs)
    (root / "vmlinuz").symlink_to(f"boot/vmlinuz-{KERNEL}")
    (root / "initrd.img").symlink_to(f"boot/initrd.img-{KERNEL}")


def set_initramfs(root: Path, files: dict[str, str], compress: str = "zstd") -> None:
    make_initramfs(root / f"boot/initrd.img-{KERNEL}", files, compress)


def write_root(image: Path, root: Path) -> None:
    run("mke2fs", "-q", "-F", "-t", "ext4", "-U", ROOT_UUID, "-d", str(root), "-E", f"offset={ROOT_START}",
        str(image), f"{(DISK_SIZE - ROOT_START) // MIB - 1}M")


def build_good(image: Path, root: Path) -> None:
    image.touch()
    os.truncate(image, DISK_SIZE)
    table = (f"label: gpt\n"
             f"start={BIOS_START // 512}, size={MIB // 512}, type=21686148-6449-6E6F-744E-656564454649\n"
             f"start={ESP_START // 512}, size={16 * MIB // 512}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
             f"start={ROOT_START // 512}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n")
    run("sfdisk", "--quiet", str(image), input=table.encode())
    write_at(image, 0, GRUB_BOOT_CODE)
    write_at(image, BIOS_START, b"\x52\xbf\xf4\x81" + b"GRUB core" * 50)  # grub-install's core.img
    run("mkfs.fat", "-F", "16", f"--offset={ESP_START // 512}", str(image), str(16 * MIB // 1024))
    esp = f"{image}@@{ESP_START}"
    run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT", "::/EFI/debian", env=MTOOLS)
    loader = image.parent / "grubx64.efi"
    loader.write_bytes(b"MZ" + b"\x00" * 1022)
    run("mcopy", "-i", esp, str(loader), "::/EFI/BOOT/BOOTX64.EFI", env=MTOOLS)
    run("mcopy", "-i", esp, str(loader), "::/EFI/debian/grubx64.efi", env=MTOOLS)
    loader.unlink()
    write_root(image, root)


@dataclass(frozen=True)
class Good:
    image: Path
    root: Path


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Good:
    base = tmp_path_factory.mktemp("good")
    root = base / "root"
    root.mkdir()
    lay_out_root(root)
    image = base / "golden.img"
    build_good(image, root)
    return Good(image, root)


@pytest.fixture
def copy(good: Good, tmp_path: Path) -> Iterator[Path]:
    image = tmp_path / "broken.img"
    run("cp", "--sparse=always", str(good.image), str(image))
    yield image


def with_root(good: Good, image: Path, tmp_path: Path, change: Callable[[Path], None]) -> Path:
    """`image` with its root filesystem rebuilt from a copy of the good tree that `change` edited."""
    root = tmp_path / "root"
    shutil.copytree(good.root, root, symlinks=True)
    change(root)
    write_root(image, root)
    return image


def only(findings: list[Finding], topic: str) -> Finding:
    matching = [f for f in findings if f.topic == topic]
    assert len(matching) == 1, findings
    return matching[0]


def levels(findings: list[Finding]) -> set[Level]:
    return {f.level for f in findings}


# --- the good image ------------------------------------------------------------------------------------


def test_the_good_image_has_nothing_to_change(good: Good) -> None:
    findings = check_image(good.image)
    assert levels(findings) == {Level.OK}, findings
    assert only(findings, "partition table").message == "GPT with 3 partitions"
    assert only(findings, "BIOS boot").message == "GPT with a BIOS boot partition (1) and GRUB in the MBR"
    assert "\\EFI\\BOOT\\BOOTX64.EFI" in only(findings, "UEFI boot").message
    assert ROOT_UUID in only(findings, "root filesystem").message
    assert only(findings, "fstab").message == f"/etc/fstab names the root by UUID={ROOT_UUID}"
    assert only(findings, "kernel command line").message == (
        f"the kernel command line in /boot/grub/grub.cfg names the root by UUID={ROOT_UUID}")
    assert "ISCSI_AUTO=true" in only(findings, "initramfs").message
    assert f"/boot/initrd.img-{KERNEL}" in only(findings, "initramfs").message


# --- boot ------------------------------------------------------------------------------------------------


def test_no_removable_loader_says_to_copy_debians(copy: Path) -> None:
    run("mdel", "-i", f"{copy}@@{ESP_START}", "::/EFI/BOOT/BOOTX64.EFI", env=MTOOLS)
    findings = check_image(copy)
    uefi = only(findings, "UEFI boot")
    assert uefi.level is Level.WARNING  # BIOS still boots it
    assert "UEFI workstations" in uefi.message
    assert "copy it to \\EFI\\BOOT\\BOOTX64.EFI" in uefi.message
    assert "has \\EFI\\debian\\grubx64.efi but" in uefi.message
    assert only(findings, "BIOS boot").level is Level.OK


def test_the_removable_loader_in_lower_case_is_found(copy: Path, tmp_path: Path) -> None:
    esp = f"{copy}@@{ESP_START}"
    loader = tmp_path / "bootx64.efi"
    loader.write_bytes(b"MZ")
    run("mdel", "-i", esp, "::/EFI/BOOT/BOOTX64.EFI", env=MTOOLS)
    run("mcopy", "-i", esp, str(loader), "::/EFI/BOOT/bootx64.efi", env=MTOOLS)
    assert only(check_image(copy), "UEFI boot").level is Level.OK


def test_no_bios_boot_code_is_a_warning_naming_legacy_workstations(copy: Path) -> None:
    write_at(copy, 0, bytes(440))
    findings = check_image(copy)
    bios = only(findings, "BIOS boot")
    assert bios.level is Level.WARNING
    assert "legacy BIOS" in bios.message and "grub-install --target=i386-pc" in bios.message
    assert only(findings, "UEFI boot").level is Level.OK


def test_an_empty_bios_boot_partition_says_grub_install(copy: Path) -> None:
    write_at(copy, BIOS_START, bytes(512))
    bios = only(check_image(copy), "BIOS boot")
    assert bios.level is Level.WARNING
    assert "BIOS boot partition (1) is empty" in bios.message and "grub-install" in bios.message


def test_neither_bios_nor_uefi_is_an_error(copy: Path) -> None:
    write_at(copy, 0, bytes(440))
    run("mdel", "-i", f"{copy}@@{ESP_START}", "::/EFI/BOOT/BOOTX64.EFI", "::/EFI/debian/grubx64.efi", env=MTOOLS)
    findings = check_image(copy)
    assert only(findings, "BIOS boot").level is Level.ERROR
    uefi = only(findings, "UEFI boot")
    assert uefi.level is Level.ERROR and "grub-install --target=x86_64-efi --removable" in uefi.message


def test_an_mbr_disk_with_boot_code(tmp_path: Path, good: Good) -> None:
    image = tmp_path / "mbr.img"
    image.touch()
    os.truncate(image, DISK_SIZE)
    run("sfdisk", "--quiet", str(image), input=f"label: dos\nstart={ROOT_START // 512}, type=83, bootable\n".encode())
    write_at(image, 0, GRUB_BOOT_CODE)
    write_root(image, good.root)
    findings = check_image(image)
    assert only(findings, "BIOS boot") == Finding(Level.OK, "BIOS boot", "MBR with GRUB in its boot code")
    uefi = only(findings, "UEFI boot")
    assert uefi.level is Level.WARNING and "no EFI system partition" in uefi.message
    assert only(findings, "initramfs").level is Level.OK


def test_no_partition_table_is_an_error(tmp_path: Path) -> None:
    image = tmp_path / "partition.img"  # a filesystem alone: what `dd if=/dev/sda1` gives
    image.touch()
    os.truncate(image, 8 * MIB)
    run("mke2fs", "-q", "-F", "-t", "ext4", str(image))
    findings = check_image(image)
    assert [f.level for f in findings] == [Level.ERROR]
    assert "not a single partition" in findings[0].message and "whole disk" in findings[0].message


def test_a_truncated_image_is_an_error(copy: Path) -> None:
    os.truncate(copy, DISK_SIZE - 4 * MIB)
    finding = only(check_image(copy), "partition table")
    assert finding.level is Level.ERROR and "cut short" in finding.message and "copy the image again" in finding.message


# --- root by UUID ----------------------------------------------------------------------------------------


def test_fstab_with_a_disk_name_is_an_error(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        (root / "etc/fstab").write_text("/dev/sda1 / ext4 errors=remount-ro 0 1\n")
    fstab = only(check_image(with_root(good, copy, tmp_path, change)), "fstab")
    assert fstab.level is Level.ERROR
    assert "/dev/sda1" in fstab.message and f"write UUID={ROOT_UUID}" in fstab.message


def test_fstab_with_a_label_is_a_warning(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        (root / "etc/fstab").write_text("LABEL=root / ext4 defaults 0 1\n")
    fstab = only(check_image(with_root(good, copy, tmp_path, change)), "fstab")
    assert fstab.level is Level.WARNING and f"write UUID={ROOT_UUID}" in fstab.message


def test_fstab_with_another_filesystems_uuid_is_an_error(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        (root / "etc/fstab").write_text("UUID=0e6f6d1c-0000-4000-8000-000000000000 / ext4 defaults 0 1\n")
    fstab = only(check_image(with_root(good, copy, tmp_path, change)), "fstab")
    assert fstab.level is Level.ERROR
    assert f"the root filesystem's UUID is {ROOT_UUID}: write UUID={ROOT_UUID}" in fstab.message


def test_grub_root_with_a_disk_name_is_an_error(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        cfg = root / "boot/grub/grub.cfg"
        cfg.write_text(cfg.read_text().replace(f"root=UUID={ROOT_UUID} ro quiet", "root=/dev/sda1 ro quiet"))
    cmdline = only(check_image(with_root(good, copy, tmp_path, change)), "kernel command line")
    assert cmdline.level is Level.ERROR
    assert "root as /dev/sda1" in cmdline.message and f"write UUID={ROOT_UUID}" in cmdline.message
    assert "GRUB_DISABLE_LINUX_UUID" in cmdline.message and "(1 of 2 menu entries)" in cmdline.message


# --- the initramfs ---------------------------------------------------------------------------------------


def test_an_initramfs_without_iscsistart_is_an_error(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        set_initramfs(root, {k: v for k, v in INITRAMFS_TOOLS.items() if "iscsi" not in k})
    initramfs = only(check_image(with_root(good, copy, tmp_path, change)), "initramfs")
    assert initramfs.level is Level.ERROR
    assert initramfs.message.startswith("the initramfs cannot log in to the iSCSI disk from the iBFT")
    assert "install open-iscsi" in initramfs.message and "ISCSI_AUTO=true" in initramfs.message
    assert "update-initramfs -u" in initramfs.message


def test_an_initramfs_without_iscsi_auto_is_an_error(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        set_initramfs(root, {**INITRAMFS_TOOLS, "etc/iscsi.initramfs": "# ISCSI_AUTO=true\n"}, compress="gzip")
        (root / "etc/iscsi/iscsi.initramfs").write_text("#ISCSI_AUTO=true\n")
    initramfs = only(check_image(with_root(good, copy, tmp_path, change)), "initramfs")
    assert initramfs.level is Level.ERROR
    assert "does not set ISCSI_AUTO" in initramfs.message and "put ISCSI_AUTO=true in" in initramfs.message


def test_iscsi_auto_only_in_the_image_says_update_initramfs(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        set_initramfs(root, {k: v for k, v in INITRAMFS_TOOLS.items() if k != "etc/iscsi.initramfs"})
    initramfs = only(check_image(with_root(good, copy, tmp_path, change)), "initramfs")
    assert initramfs.level is Level.ERROR
    assert "built before: run update-initramfs -u in the image" in initramfs.message


def test_a_dracut_initramfs_with_rd_iscsi_firmware(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        set_initramfs(root, DRACUT)
    findings = check_image(with_root(good, copy, tmp_path, change))
    initramfs = only(findings, "initramfs")
    assert initramfs.level is Level.OK and "etc/cmdline.d/40-iscsi.conf" in initramfs.message
    assert levels(findings) == {Level.OK}  # open-iscsi's own files are initramfs-tools' business


def test_debians_dracut_logs_in_with_iscsiadm_and_iscsid_and_has_no_iscsistart(
    good: Good, copy: Path, tmp_path: Path
) -> None:
    # What Debian 12's dracut 059 puts in an initramfs (systemd in it: iscsid with iscsiadm; a merged /usr).
    debian = {k: v for k, v in DRACUT.items() if k != "usr/sbin/iscsistart"}
    debian.update({"usr/bin/iscsiadm": "ELF", "usr/bin/iscsid": "ELF"})

    def change(root: Path) -> None:
        set_initramfs(root, debian)
    initramfs = only(check_image(with_root(good, copy, tmp_path, change)), "initramfs")
    assert initramfs.level is Level.OK, initramfs.message


def test_a_dracut_initramfs_with_rd_iscsi_firmware_on_the_command_line(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        set_initramfs(root, {k: v for k, v in DRACUT.items() if "cmdline.d" not in k})
        cfg = root / "boot/grub/grub.cfg"
        cfg.write_text(cfg.read_text().replace(" ro ", " ro rd.iscsi.firmware=1 "))
    initramfs = only(check_image(with_root(good, copy, tmp_path, change)), "initramfs")
    assert initramfs.level is Level.OK and "on the kernel command line" in initramfs.message


def test_a_dracut_initramfs_without_rd_iscsi_firmware_is_an_error(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        set_initramfs(root, {k: v for k, v in DRACUT.items() if "cmdline.d" not in k})
    initramfs = only(check_image(with_root(good, copy, tmp_path, change)), "initramfs")
    assert initramfs.level is Level.ERROR
    assert "add rd.iscsi.firmware=1 to GRUB_CMDLINE_LINUX" in initramfs.message


def test_a_dracut_initramfs_without_the_iscsi_module_is_an_error(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        set_initramfs(root, {"usr/lib/dracut/modules.txt": "base\n"})
    initramfs = only(check_image(with_root(good, copy, tmp_path, change)), "initramfs")
    assert initramfs.level is Level.ERROR
    assert "dracut --force --no-hostonly --add iscsi" in initramfs.message and "rd.iscsi.firmware=1" in initramfs.message


def test_no_initramfs_is_an_error(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        (root / f"boot/initrd.img-{KERNEL}").unlink()
        (root / "initrd.img").unlink()
    initramfs = only(check_image(with_root(good, copy, tmp_path, change)), "initramfs")
    assert initramfs.level is Level.ERROR and "no initramfs" in initramfs.message


# --- the iSCSI root's robustness -----------------------------------------------------------------------


def test_open_iscsi_defaults_give_three_warnings(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        (root / "etc/default/open-iscsi").write_text("ISCSI_ROOT_KEEP_ALL_SESSIONS_AT_SHUTDOWN=0\n")
        (root / "etc/iscsi/iscsid.conf").write_text("node.session.timeo.replacement_timeout = 120\n")
        (root / "etc/udev/rules.d/60-bootbroker-iscsi-root.rules").unlink()
    findings = check_image(with_root(good, copy, tmp_path, change))
    warnings = [f for f in findings if f.level is Level.WARNING]
    assert [f.topic for f in warnings] == ["iSCSI shutdown", "iSCSI timeouts", "iSCSI timeouts"]
    assert "ISCSI_ROOT_KEEP_ALL_SESSIONS_AT_SHUTDOWN=1" in warnings[0].message and "set it to 1" in warnings[0].message
    assert "keeps the kernel's 120 s" in warnings[1].message and 'ATTR{recovery_tmo}="600"' in warnings[1].message
    assert "replacement_timeout = 120" in warnings[2].message and "600 or more" in warnings[2].message
    assert Level.ERROR not in levels(findings)


def test_a_short_udev_recovery_timeout_is_a_warning(good: Good, copy: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        rule = root / "etc/udev/rules.d/60-bootbroker-iscsi-root.rules"
        rule.write_text(rule.read_text().replace('"600"', '"30"'))
    timeouts = only(check_image(with_root(good, copy, tmp_path, change)), "iSCSI timeouts")
    assert timeouts.level is Level.WARNING and "keeps 30 s of replacement timeout" in timeouts.message


# --- roots this check cannot read ----------------------------------------------------------------------


def test_a_non_ext_root_is_a_warning_to_check_by_hand(copy: Path) -> None:
    write_at(copy, ROOT_START, b"XFSB" + bytes(4096))  # XFS's magic where ext's superblock was
    findings = check_image(copy)
    root = only(findings, "root filesystem")
    assert root.level is Level.WARNING
    assert "partition 3 holds XFS" in root.message and "check by hand" in root.message
    assert Level.ERROR not in levels(findings)


# --- refusals ------------------------------------------------------------------------------------------


def test_unusable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="no such file"):
        check_image(tmp_path / "missing.img")
    with pytest.raises(BadRequest, match="not a regular file"):
        check_image(tmp_path)
    small = tmp_path / "small.img"
    small.write_bytes(bytes(4096))
    with pytest.raises(BadRequest, match="too small"):
        check_image(small)


def test_a_missing_tool_names_its_package(good: Good, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendFailure, match=r"apt-get install .*initramfs-tools-core.*mtools"):
        check_image(good.image)


def test_a_file_name_with_question_mark_and_at_signs(good: Good, tmp_path: Path) -> None:
    # debugfs reads "FILE?offset=" and mtools "FILE@@OFFSET": the check hands them a link with a plain name
    odd = tmp_path / "golden?x@@1.img"
    odd.symlink_to(good.image)
    assert levels(check_image(odd)) == {Level.OK}


# --- the command line ----------------------------------------------------------------------------------


def test_cli_check_exit_status_and_lines(good: Good, copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["images", "check", str(good.image)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "ok      partition table: GPT with 3 partitions"
    assert out[-1] == f"{good.image}: 0 error(s), 0 warning(s): it can be published"

    write_at(copy, 0, bytes(440))
    run("mdel", "-i", f"{copy}@@{ESP_START}", "::/EFI/BOOT/BOOTX64.EFI", env=MTOOLS)
    assert main(["images", "check", str(copy)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("error   BIOS boot: ") for line in out)
    assert out[-1].endswith("2 error(s), 0 warning(s): fix the errors before publishing it")


def test_cli_check_json(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_at(copy, 0, bytes(440))
    assert main(["images", "check", "--json", str(copy)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["warnings"] == 1
    assert {"level": "warning", "topic": "BIOS boot"}.items() <= report["findings"][1].items()


def test_cli_check_refuses_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["images", "check", str(tmp_path / "nope.img")]) == 1
    assert "bootbroker: bad_request: " in capsys.readouterr().err


def test_publish_refuses_an_image_with_errors_before_asking_the_helper(
    good: Good, copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    socket = str(tmp_path / "no-helper.sock")  # nothing listens: reaching the helper would fail differently
    write_at(copy, 0, bytes(440))
    run("mdel", "-i", f"{copy}@@{ESP_START}", "::/EFI/BOOT/BOOTX64.EFI", "::/EFI/debian/grubx64.efi", env=MTOOLS)
    assert main(["--socket", socket, "images", "publish", "demo", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "error   UEFI boot: " in err and "helper_unavailable" not in err
    assert f"bootbroker images check {copy}" in err and "--no-check" in err

    # --no-check, and an image without errors, go on to the helper (which is not there)
    assert main(["--socket", socket, "images", "publish", "--no-check", "demo", str(copy)]) == 1
    assert "helper_unavailable" in capsys.readouterr().err
    assert main(["--socket", socket, "images", "publish", "demo", str(good.image)]) == 1
    err = capsys.readouterr().err
    assert "helper_unavailable" in err and "error " not in err
