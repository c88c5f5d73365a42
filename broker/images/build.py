"""`bootbroker images build`: a bootable Debian disk image for iSCSI root, from Debian's packages.

mmdebstrap installs the system into a directory; the disk is then assembled in a file without loop
devices or mounts (sfdisk, mkfs.fat --offset and mtools, mke2fs -d -E offset, GRUB's images written by
broker/images/grub.py), so it builds on any Debian host with the tools, in a container too.

The disk boots BIOS and UEFI workstations alike:
  GPT: 1 BIOS boot partition (GRUB's core.img; the MBR holds boot.img)
       2 EFI system partition, FAT, with \\EFI\\BOOT\\BOOTX64.EFI (the removable-media path: firmware finds
         it with no boot entry of its own, and a workstation has none for a disk it never saw)
       3 the root filesystem, ext4, found by UUID (an iSCSI disk is /dev/sdX in any order)
and carries what an iSCSI root needs, each where it is written below with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..shared.errors import BackendFailure, BadRequest, NotPermitted
from . import grub
from .tools import missing_packages

MiB = 1 << 20
BIOS_BOOT = (1 * MiB, 1 * MiB)  # (start, size): core.img, about 150 KiB with the modules below
ESP = (2 * MiB, 62 * MiB)
ROOT_START = 64 * MiB
MIN_SIZE = 1536 * MiB  # the base system is about 700 MiB
DEFAULT_SIZE = 4 << 30
SUITE = "bookworm"  # Debian 12: what the README and the image check are written against

# What every image gets. Sites add theirs with --package.
BASE_PACKAGES = (
    "linux-image-amd64", "systemd-sysv", "udev", "dbus", "kmod", "iproute2", "procps", "e2fsprogs", "passwd",
    "open-iscsi", "zstd",
    # GRUB's tools and modules for both firmwares; the image is set up here, not by grub-install.
    "grub-common", "grub-pc-bin", "grub-efi-amd64-bin",
)
# The initramfs that logs in to the iSCSI root, by --initramfs: its packages (installed with the kernel).
INITRAMFS_PACKAGES = {
    # Debian's own: open-iscsi's initramfs hook puts iscsistart in it; busybox gives it `ip`, without which
    # it sets up the iBFT's address but no default route. Booted by sanboot (the iBFT).
    "initramfs-tools": ("initramfs-tools", "busybox"),
    # dracut, as Fedora and RHEL make theirs: boots by sanboot (rd.iscsi.firmware=1) and by netroot=iscsi:...
    # Its network-legacy backend runs dhclient.
    "dracut": ("dracut", "dracut-network", "isc-dhcp-client"),
}
PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
TOOLS = {  # command: the Debian package that has it
    "mmdebstrap": "mmdebstrap", "sfdisk": "fdisk", "mkfs.fat": "dosfstools", "mcopy": "mtools",
    "mmd": "mtools", "mke2fs": "e2fsprogs", "chroot": "coreutils",
}
# GRUB modules in core.img: enough to find the root filesystem by UUID on a GPT disk and read grub.cfg;
# the rest load from /boot/grub/<platform>/ as grub.cfg needs them.
GRUB_CORE_MODULES = ("part_gpt", "part_msdos", "ext2", "search", "normal", "configfile", "serial", "terminal")
GRUB_PLATFORMS = {"i386-pc": ("biosdisk",), "x86_64-efi": ("fat",)}
# The workstation's serial port carries the console too: the lab reads it, and a site can log it.
CONSOLE = "console=tty0 console=ttyS0,115200n8"
# How long the OS queues I/O while its iSCSI session is down before failing it (open-iscsi's README on iSCSI
# root: a very long replacement timeout). It must outlast a helper restart (seconds) and a server reboot
# (minutes); the price is that a workstation whose disk was taken over by the same user elsewhere hangs this
# long before its root fails (it can write nothing meanwhile: its ACL is gone).
REPLACEMENT_TIMEOUT = 600
# The initramfs-tools hook of every image (etc/initramfs-tools/hooks/bootbroker), with MODULES=list: what an
# iSCSI root on any workstation needs, and few local disks' drivers. A workstation's GRUB reads the initramfs
# through iPXE's SAN hook, a few hundred KiB/s on some firmware, so each MiB left out is seconds off every
# boot: with zstd, MODULES=most made 30 MiB, netboot (every filesystem too) 23, this 16.5 (about half of it
# the ethernet drivers; a site whose workstations all have one kind of card may name only it).
INITRAMFS_HOOK = """#!/bin/sh
# bootbroker: the modules of an iSCSI root (MODULES=list in conf.d/bootbroker).
case "$1" in prereqs) exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
# Every wired network card's driver, on the board or on USB: the workstation's, whichever it is.
copy_modules_dir kernel/drivers/net/ethernet
copy_modules_dir kernel/drivers/net/usb
manual_add_modules virtio_net virtio_pci
# The iSCSI disk and its root filesystem (open-iscsi's own hook adds iscsi_tcp and the iBFT's module).
manual_add_modules sd_mod ext4
# A local disk's, so that the image also boots in a VM or on a PC to be prepared or compared (a few KiB).
manual_add_modules ahci nvme virtio_blk virtio_scsi
# A keyboard for the initramfs's rescue shell.
manual_add_modules atkbd i8042 usbhid hid_generic xhci_pci ehci_pci ohci_pci uhci_hcd
"""
# dracut's configuration of every --initramfs dracut image (etc/dracut.conf.d/bootbroker.conf); each line is
# one of the reasons a Debian dracut image did not boot from iSCSI until it was there.
DRACUT_CONF = """# bootbroker: an initramfs for an iSCSI root on any workstation.
# Every workstation's network and disk drivers, not only those of the machine that built the image.
hostonly="no"
# The iSCSI login: from the iBFT that iPXE's sanboot leaves (rd.iscsi.firmware=1, on GRUB's command line),
# or from netroot=iscsi:... on the command line iPXE gives the kernel.
add_dracutmodules+=" iscsi network-legacy "
# Debian's dracut picks systemd-networkd's network backend when systemd has it, and that backend never
# starts the iSCSI login: network-legacy (ip and dhclient) does.
omit_dracutmodules+=" systemd-networkd network-manager "
# Debian's iscsid.service runs this before iscsid, and dracut's iscsi module does not copy it: without it
# iscsid never starts in the initramfs.
install_items+=" /lib/open-iscsi/startup-checks.sh "
compress="zstd"
"""
INITRAMFS_KINDS = tuple(INITRAMFS_PACKAGES)


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    size: int = DEFAULT_SIZE
    packages: tuple[str, ...] = ()
    hostname: str = "workstation"
    mirror: str | None = None  # default: mmdebstrap's (deb.debian.org, with updates and security)
    root_password: str | None = None  # None: root stays locked
    user: str | None = None  # a local account (sudo is not installed unless asked for)
    user_password: str | None = None
    customize: tuple[Path, ...] = ()  # scripts run with the root directory as $1, before the disk is made
    initramfs: str = "initramfs-tools"  # or "dracut": INITRAMFS_PACKAGES
    force: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.size < MIN_SIZE:
            problems.append(f"--size {self.size // MiB} MiB is too small: the base system needs {MIN_SIZE // MiB} MiB")
        for name in self.packages:
            if not PACKAGE.match(name):
                problems.append(f"--package {name!r} is not a Debian package name")
        if not HOSTNAME.match(self.hostname):
            problems.append(f"--hostname {self.hostname!r}: use lower-case letters, digits and '-'")
        if self.user is not None and not USER.match(self.user):
            problems.append(f"--user {self.user!r}: use a lower-case login name (letters, digits, '_', '-')")
        if self.user_password is not None and self.user is None:
            problems.append("a user password needs --user")
        for secret in (self.root_password, self.user_password):
            if secret is not None and (not secret or "\n" in secret or ":" in secret):
                problems.append("a password must be one non-empty line without ':'")
        if self.initramfs not in INITRAMFS_PACKAGES:
            problems.append(f"--initramfs {self.initramfs!r}: choose {' or '.join(INITRAMFS_KINDS)}")
        for script in self.customize:
            if not script.is_file() or not os.access(script, os.X_OK):
                problems.append(f"--customize {script}: not an executable file")
        if problems:
            raise BadRequest("; ".join(problems))


@dataclass
class Progress:
    """Numbered steps on stderr, so a long build shows where it is."""

    steps: int
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))
    done: int = 0

    def step(self, what: str) -> None:
        self.done += 1
        self.say(f"images build: [{self.done}/{self.steps}] {what}")


def build_image(options: BuildOptions, progress: Progress | None = None) -> str:
    """Build the disk image `options.output` and return its root filesystem's UUID (a netroot image's command
    line names it); nothing is left behind if it fails."""
    progress = progress or Progress(steps=5)
    _preflight(options)
    output = options.output.resolve()
    with tempfile.TemporaryDirectory(prefix=".images-build-", dir=output.parent) as tmp:
        work = Path(tmp)
        root = work / "root"
        progress.step(f"installing Debian 12 ({SUITE}) with mmdebstrap: {len(_packages(options))} packages "
                      f"and what they need, the initramfs made by {options.initramfs} (a few minutes; its own "
                      "lines follow)")
        _install(options, work, root)
        progress.step("configuring the system for an iSCSI root")
        root_uuid = str(uuid.uuid4())
        _configure(options, root, root_uuid)
        progress.step("making GRUB for BIOS and UEFI")
        core_img, boot_img, efi_img = _grub_images(root, work, root_uuid)
        progress.step(f"assembling the disk ({options.size / (1 << 30):.1f} GiB, sparse)")
        disk = work / "disk.img"
        _assemble(disk, options.size, root, root_uuid, core_img, boot_img, efi_img)
        progress.step(f"writing {output}")
        with open(disk, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(disk, output)
    return root_uuid


def _preflight(options: BuildOptions) -> None:
    if os.geteuid() != 0:
        raise NotPermitted("images build must run as root (mmdebstrap installs packages as root into the image)")
    missing = missing_packages(TOOLS)
    if missing:
        raise BackendFailure(f"images build needs the Debian packages {', '.join(missing)}: "
                             f"apt-get install {' '.join(missing)}")
    output = options.output
    if output.exists() and not options.force:
        raise BadRequest(f"{output} exists: choose another name, or --force to replace it")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise BadRequest(f"{parent} is not a directory")
    free = shutil.disk_usage(parent).free
    # The root directory (~700 MiB) and the disk's written blocks (about as much) exist side by side.
    if free < 3 * MIN_SIZE // 2:
        raise BadRequest(f"{parent} has {free // MiB} MiB free; a build needs about {3 * MIN_SIZE // 2 // MiB} MiB")


def _run(argv: Sequence[str], what: str, *, stdin: str | None = None, quiet: bool = True,
         env: dict[str, str] | None = None) -> str:
    """Run a tool; its failure is one clear error with the tool's own last lines."""
    try:
        done = subprocess.run(list(argv), input=stdin, text=True, check=False, env=env,
                              stdout=subprocess.PIPE if quiet else sys.stderr,
                              stderr=subprocess.PIPE if quiet else None)
    except FileNotFoundError:
        raise BackendFailure(f"{what}: {argv[0]} is not installed") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or "").strip().splitlines()[-15:])
        raise BackendFailure(f"{what} failed (exit {done.returncode})" + (f":\n{tail}" if tail else ""))
    return done.stdout or ""


def _packages(options: BuildOptions) -> tuple[str, ...]:
    return BASE_PACKAGES + INITRAMFS_PACKAGES[options.initramfs] + options.packages


def _install(options: BuildOptions, work: Path, root: Path) -> None:
    early = work / "early"
    # Written before the kernel's package is installed, so its initramfs is built once, already with these.
    if options.initramfs == "dracut":
        _write(early / "etc/dracut.conf.d/bootbroker.conf", DRACUT_CONF)
    else:
        _write(early / "etc/iscsi/iscsi.initramfs",
               "# bootbroker: the initramfs logs in to the root disk with what iPXE's sanboot left in the iBFT\n"
               "# (target, initiator name, CHAP user and secret of this boot session).\n"
               "ISCSI_AUTO=true\n")
        _write(early / "etc/initramfs-tools/conf.d/bootbroker",
               "# bootbroker: only the modules hooks/bootbroker names (an iSCSI root's: network cards, sd_mod,\n"
               "# ext4): a smaller initramfs, which every workstation reads over the network at every boot.\n"
               "MODULES=list\n")
        hook = early / "etc/initramfs-tools/hooks/bootbroker"
        _write(hook, INITRAMFS_HOOK)
        hook.chmod(0o755)
    argv = [
        "mmdebstrap", "--variant=minbase", f"--include={','.join(_packages(options))}",
        # grub-pc's configuration would try to install GRUB on the build host's disks: only -bin packages.
        f"--essential-hook=sync-in {early} /",
        SUITE, str(root),
    ]
    if options.mirror:
        argv.append(options.mirror)
    _run(argv, "mmdebstrap", quiet=False)


def _configure(options: BuildOptions, root: Path, root_uuid: str) -> None:
    _write(root / "etc/fstab",
           "# bootbroker: root by UUID: the iSCSI disk's device name differs from one workstation to the next.\n"
           f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    _write(root / "etc/hostname", f"{options.hostname}\n")
    _write(root / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {options.hostname}\n")
    # Empty: every user's copy makes its own at its first boot (one golden image, many machines).
    _write(root / "etc/machine-id", "")
    _set_in(root / "etc/default/open-iscsi", "ISCSI_ROOT_KEEP_ALL_SESSIONS_AT_SHUTDOWN", "1",
            "bootbroker: never log out of the root disk at shutdown, or the OS loses its disk before it is done")
    iscsid = root / "etc/iscsi/iscsid.conf"
    _set_in(iscsid, "node.session.timeo.replacement_timeout", str(REPLACEMENT_TIMEOUT),
            "bootbroker: sessions iscsid makes ride out a helper restart or a server reboot", sep=" = ")
    # The root session is made in the initramfs (iscsistart), with the kernel's 120 s; udev's coldplug at boot
    # gives it the same timeout as iscsid's own sessions.
    _write(root / "etc/udev/rules.d/60-bootbroker-iscsi-root.rules",
           "# bootbroker: the root disk's session queues I/O through a helper restart or a server reboot.\n"
           'ACTION=="add|change", SUBSYSTEM=="iscsi_session", '
           f'ATTR{{recovery_tmo}}="{REPLACEMENT_TIMEOUT}"\n')
    # No network manager is installed: the boot NIC stays as the initramfs set it up from the iBFT (one that
    # took the interface down for DHCP would take the root disk with it).
    # dracut logs in from the iBFT only when told to; initramfs-tools' ISCSI_AUTO is set in the initramfs.
    from_ibft = " rd.iscsi.firmware=1" if options.initramfs == "dracut" else ""
    _write(root / "boot/grub/grub.cfg", _grub_cfg(root_uuid, from_ibft))
    for platform in GRUB_PLATFORMS:
        shutil.copytree(root / "usr/lib/grub" / platform, root / "boot/grub" / platform, dirs_exist_ok=True)
    accounts = []
    if options.root_password is not None:
        accounts.append(f"root:{options.root_password}")
    if options.user is not None:
        _run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", options.user], "useradd")
        if options.user_password is not None:
            accounts.append(f"{options.user}:{options.user_password}")
    if accounts:  # on stdin: a secret never goes on a command line
        _run(["chroot", str(root), "chpasswd"], "chpasswd", stdin="".join(f"{a}\n" for a in accounts))
    for script in options.customize:
        _run([str(script.resolve()), str(root)], f"--customize {script}", quiet=False)


def netroot_cmdline(root_uuid: str) -> str:
    """The kernel command line a dracut image needs as its `[images.NAME] cmdline` to boot by netroot: iPXE
    starts the kernel itself, so nothing of GRUB's line is there (the broker adds netroot= and the initiator)."""
    return f"root=UUID={root_uuid} ro ip=dhcp {CONSOLE}"


def _grub_cfg(root_uuid: str, extra: str = "") -> str:
    return f"""# bootbroker images build: GRUB's menu for BIOS and UEFI alike (boot/grub/<platform>/ holds the modules).
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
search --no-floppy --fs-uuid --set=root {root_uuid}
if [ "$grub_platform" = efi ]; then
    # The firmware's framebuffer for Linux's efifb: without it the screen stays dark until a DRM driver loads.
    insmod all_video
fi
menuentry 'Debian GNU/Linux 12 on its iSCSI disk' {{
    insmod gzio
    # /vmlinuz and /initrd.img follow the installed kernel (Debian's kernel packages keep these links).
    linux /vmlinuz root=UUID={root_uuid} ro {CONSOLE}{extra}
    initrd /initrd.img
}}
"""


def _grub_images(root: Path, work: Path, root_uuid: str) -> tuple[bytes, bytes, bytes]:
    """core.img and boot.img (BIOS) and BOOTX64.EFI, made by the image's own grub-mkimage."""
    # Run in the image: its GRUB's tools and modules, whatever the build host has.
    scratch = root / "tmp/bootbroker-grub"
    scratch.mkdir(parents=True)
    _write(scratch / "early.cfg",
           f"search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\n")
    made = {}
    for platform, extra in GRUB_PLATFORMS.items():
        _run(["chroot", str(root), "grub-mkimage", "-O", platform, "-d", f"/usr/lib/grub/{platform}",
              "-c", "/tmp/bootbroker-grub/early.cfg", "-p", "/boot/grub", "-o", f"/tmp/bootbroker-grub/{platform}.img",
              *extra, *GRUB_CORE_MODULES], f"grub-mkimage {platform}")
        made[platform] = (scratch / f"{platform}.img").read_bytes()
    boot_img = (root / "usr/lib/grub/i386-pc/boot.img").read_bytes()
    shutil.rmtree(scratch)
    return made["i386-pc"], boot_img, made["x86_64-efi"]


def _assemble(disk: Path, size: int, root: Path, root_uuid: str, core_img: bytes, boot_img: bytes,
              efi_img: bytes) -> None:
    with open(disk, "wb") as f:
        f.truncate(size)
    if len(core_img) > BIOS_BOOT[1]:
        raise BackendFailure(f"GRUB's core.img ({len(core_img)} bytes) does not fit the BIOS boot partition")
    _run(["sfdisk", "--quiet", str(disk)], "sfdisk", stdin=(
        "label: gpt\n"
        f"start={BIOS_BOOT[0] // 512}, size={BIOS_BOOT[1] // 512}, type=21686148-6449-6E6F-744E-656564454649, name=bios\n"
        f"start={ESP[0] // 512}, size={ESP[1] // 512}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
        f"start={ROOT_START // 512}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n"
    ))
    # The ESP is made in a file of its own and copied in: mkfs.fat --offset sizes the FAT by the whole disk.
    esp = disk.parent / "esp.img"
    _run(["mkfs.fat", "-C", "-n", "ESP", str(esp), str(ESP[1] // 1024)], "mkfs.fat")
    efi = disk.parent / "BOOTX64.EFI"
    efi.write_bytes(efi_img)
    mtools = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    _run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], "mmd", env=mtools)
    _run(["mcopy", "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], "mcopy", env=mtools)
    with open(esp, "rb") as source, open(disk, "rb+") as f:
        f.seek(ESP[0])
        shutil.copyfileobj(source, f)
    root_kib = (size - ROOT_START) // 1024 - 1024  # leave GPT's backup header its last sectors
    _run(["mke2fs", "-q", "-t", "ext4", "-d", str(root), "-U", root_uuid, "-L", "root",
          # Inode tables and journal written now: else each user's copy would do it at its first boot.
          "-E", f"offset={ROOT_START},lazy_itable_init=0,lazy_journal_init=0", str(disk), f"{root_kib}k"], "mke2fs")
    core_lba = BIOS_BOOT[0] // grub.SECTOR
    with open(disk, "rb+") as f:
        f.write(grub.boot_sector(boot_img, core_lba))
        f.seek(BIOS_BOOT[0])
        f.write(grub.placed_core(core_img, core_lba))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _set_in(path: Path, key: str, value: str, why: str, sep: str = "=") -> None:
    """Set `key` in a shell- or iscsid-style file: the existing line is commented out, ours appended."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [f"#{line}" if line.split("=")[0].strip() == key else line for line in lines]
    _write(path, "\n".join([*kept, f"# {why}", f"{key}{sep}{value}"]) + "\n")
