"""`bootbroker images check FILE`: will this raw disk image boot as a workstation's iSCSI disk?

A site checks its own golden image before publishing it. Everything is read from the file itself, with no
loop device and no mount (the host kernel may have neither to spare): the partition table with sfdisk, the
EFI system partition with mtools at its byte offset, the ext root filesystem with debugfs at its byte
offset (`FILE?offset=N`), the initramfs with lsinitramfs/unmkinitramfs after debugfs has dumped it to a
temporary file. Each finding says what was found or what to change.

Problems of the image become findings; problems of the host (a tool missing) or of the argument (not a
file, too small) raise BrokerError before anything is checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..shared.errors import BackendFailure, BadRequest
from . import disk as disk_module
from .disk import (
    BIOS_BOOT, ESP_DOS, ESP_GPT, EXTENDED_DOS, SECTOR, Disk, Ext, Files, Partition, Table, Unreadable,
    find_filesystems, fstab, read_table, said, separate_boot, version_key,
)
from .tools import missing_packages


class Level(Enum):
    ERROR = "error"
    WARNING = "warning"
    OK = "ok"


@dataclass(frozen=True)
class Finding:
    level: Level
    topic: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level.value, "topic": self.topic, "message": self.message}


MIN_SIZE = 2**20

# The command each check needs, and the Debian package that has it.
TOOLS = {
    **disk_module.TOOLS,  # sfdisk, debugfs
    "mdir": "mtools",
    "lsinitramfs": "initramfs-tools-core",
    "unmkinitramfs": "initramfs-tools-core",
    "cpio": "cpio",
    "zstd": "zstd",  # Debian 12's initramfs compression; lsinitramfs needs the command
}

BOOTX64 = "efi/boot/bootx64.efi"

_ISCSI_FIX = ("install open-iscsi in the image, put ISCSI_AUTO=true in /etc/iscsi/iscsi.initramfs and run "
              "update-initramfs -u")
_DRACUT_FIX = ("rebuild it with the iscsi module and without host-only mode (dracut --force --no-hostonly "
               "--add iscsi) and put rd.iscsi.firmware=1 on the kernel command line")


# --- input and host ------------------------------------------------------------------------------------


def check_image(path: Path) -> list[Finding]:
    """Every finding about the raw disk image at `path`, in the order a boot meets them.

    Raises BadRequest if `path` is not a readable regular file of at least 1 MiB, BackendFailure if a tool
    this check needs is not installed. Reads the file only; writes nothing but its own temporary directory.
    """
    _require_usable(path)
    _require_tools()
    with tempfile.TemporaryDirectory(prefix="bootbroker-check-") as tmp:
        disk = Disk(path.resolve(), Path(tmp))
        return _check_disk(disk)


def _require_usable(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadRequest(f"{path}: no such file") from None
    except OSError as e:
        raise BadRequest(f"{path}: cannot read it ({e.strerror})") from None
    if not path.is_file():
        raise BadRequest(f"{path}: not a regular file (give a raw disk image file, not a device or a directory)")
    if st.st_size < MIN_SIZE:
        raise BadRequest(f"{path}: {st.st_size} bytes is too small for a disk image (at least 1 MiB)")
    if not os.access(path, os.R_OK):
        raise BadRequest(f"{path}: not readable by this user (run the check as root, or make it readable)")


def _require_tools() -> None:
    missing = missing_packages(TOOLS)
    if missing:
        tools = ", ".join(t for t, p in TOOLS.items() if p in missing)
        raise BackendFailure(f"the image check needs {tools}: apt-get install {' '.join(missing)}")


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return disk_module.run(argv, env=env, packages=TOOLS)


# --- the disk and its partitions -----------------------------------------------------------------------


def _check_disk(disk: Disk) -> list[Finding]:
    disk.open_link()
    findings: list[Finding] = []
    table = _partition_table(disk, findings)
    if table is None:
        return findings
    bios = _bios_boot(disk, table)
    uefi = _uefi_boot(disk, table)
    findings += _boot_findings(bios, uefi)
    findings += _check_root(disk, table)
    return findings


def _partition_table(disk: Disk, findings: list[Finding]) -> Table | None:
    try:
        table = read_table(disk)
    except Unreadable as e:
        findings.append(Finding(Level.ERROR, "partition table", (
            f"no partition table that sfdisk can read ({e}): the file must be a whole disk (GPT or MBR), "
            "not a single partition or filesystem; make the image from the whole disk (e.g. qemu-img convert "
            "-O raw, or dd of /dev/sdX, not /dev/sdX1)")))
        return None
    name = {"gpt": "GPT", "dos": "MBR (dos)"}.get(table.label, table.label)
    if table.label not in ("gpt", "dos"):
        findings.append(Finding(Level.ERROR, "partition table", (
            f"a {name} partition table: PC firmware boots only GPT or MBR disks; repartition the image with one")))
        return None
    if not table.partitions:
        findings.append(Finding(Level.ERROR, "partition table", f"{name} with no partitions: the image holds nothing to boot"))
        return None
    if table.label == "dos" and any(p.type == "ee" for p in table.partitions):
        # libfdisk falls back to the protective MBR when the GPT headers do not fit the file
        findings.append(Finding(Level.ERROR, "partition table", (
            "a GPT disk whose GPT sfdisk cannot read, only its protective MBR: the file was probably cut short "
            "(the backup GPT at its end is missing) or the GPT is damaged; copy the image again, or repair it "
            "with gdisk")))
        return None
    size = disk.size()
    short = [p for p in table.partitions if p.start + p.size > size and p.type not in EXTENDED_DOS]
    if short:
        p = short[0]
        findings.append(Finding(Level.ERROR, "partition table", (
            f"partition {p.number} ends at byte {p.start + p.size} but the file has only {size} bytes: the image "
            "was cut short; copy it again (a sparse copy keeps its full size)")))
        return None
    findings.append(Finding(Level.OK, "partition table", f"{name} with {len(table.partitions)} partitions"))
    return table


# --- BIOS and UEFI boot --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Boot:
    ok: bool
    text: str  # what was found (ok) or what is missing and how to fix it (not ok)


def _loader_name(code: bytes) -> str:
    if b"GRUB " in code:
        return "GRUB"
    if b"Multiple active partitions" in code:
        return "SYSLINUX"
    return "boot code"


def _bios_boot(disk: Disk, table: Table) -> _Boot:
    code = disk.read(0, 440)
    has_code = any(code)
    loader = _loader_name(code)
    install = "grub-install --target=i386-pc on the image's disk (from a VM booted from it, or a chroot)"
    if table.label == "dos":
        if has_code:
            return _Boot(True, f"MBR with {loader} in its boot code")
        return _Boot(False, f"the MBR has no boot code: run {install}")
    bios_parts = [p for p in table.partitions if p.type == BIOS_BOOT]
    legacy = [p for p in table.partitions if "LegacyBIOSBootable" in p.attrs]
    if bios_parts:
        p = bios_parts[0]
        if not any(disk.read(p.start, SECTOR)):
            return _Boot(False, f"the BIOS boot partition ({p.number}) is empty, GRUB's core was never written "
                                f"to it: run {install}")
        if not has_code:
            return _Boot(False, f"the BIOS boot partition ({p.number}) holds GRUB's core but the MBR has no boot "
                                f"code: run {install}")
        return _Boot(True, f"GPT with a BIOS boot partition ({p.number}) and {loader} in the MBR")
    if has_code and loader == "SYSLINUX" and legacy:
        return _Boot(True, f"GPT with SYSLINUX in the MBR booting partition {legacy[0].number} (legacy BIOS bootable)")
    if has_code:
        return _Boot(False, f"{loader} in the MBR but no BIOS boot partition for GRUB's core on this GPT disk: "
                            f"add a 1 MiB partition of type BIOS boot ({BIOS_BOOT.upper()}) and run {install}")
    return _Boot(False, "no boot code in the MBR and no BIOS boot partition: add a 1 MiB partition of type BIOS "
                        f"boot ({BIOS_BOOT.upper()}) and run {install}")


def _mtools_env() -> dict[str, str]:
    # SKIP_CHECK: an ESP made by another tool may have a FAT geometry mtools would refuse for a floppy;
    # MTOOLSRC: the admin's own drive letters have no say in what we read.
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}


def _fat_paths(disk: Disk, part: Partition) -> list[str] | None:
    """Every path in the FAT filesystem at `part`, without the leading `::/`; None if not FAT."""
    result = _run(["mdir", "-/", "-b", "-i", f"{disk.link}@@{part.start}", "::/"], env=_mtools_env())
    if result.returncode != 0:
        return None
    paths = []
    for line in result.stdout.decode(errors="replace").splitlines():
        if line.startswith("::/"):
            paths.append(line[3:].rstrip("/"))
    return paths


def _uefi_boot(disk: Disk, table: Table) -> _Boot:
    esps = [p for p in table.partitions if p.type in (ESP_GPT, ESP_DOS)]
    kind = "type C12A7328-F81F-11D2-BA4B-00A0C93EC93B" if table.label == "gpt" else "type ef"
    if not esps:
        return _Boot(False, f"no EFI system partition: add a FAT partition of {kind} holding "
                            "\\EFI\\BOOT\\BOOTX64.EFI (grub-install --target=x86_64-efi --removable)")
    for p in esps:
        paths = _fat_paths(disk, p)
        if paths is None:
            return _Boot(False, f"the EFI system partition ({p.number}) holds no FAT filesystem mtools can read: "
                                "format it (mkfs.vfat) and run grub-install --target=x86_64-efi --removable")
        if BOOTX64 in (q.lower() for q in paths):  # FAT names are case-insensitive
            return _Boot(True, f"EFI system partition ({p.number}) with \\EFI\\BOOT\\BOOTX64.EFI")
        loaders = sorted(q for q in paths if q.lower().startswith("efi/") and q.lower().endswith(".efi"))
        # With Secure Boot the shim is the first stage; it loads grubx64.efi from its own directory.
        pick = next((q for q in loaders if q.lower().endswith("/shimx64.efi")), None) or \
            next((q for q in loaders if q.lower().endswith("/grubx64.efi")), None) or (loaders[0] if loaders else None)
        if pick is not None:
            shown = "\\" + pick.replace("/", "\\")
            extra = " (and grubx64.efi beside it)" if pick.lower().endswith("shimx64.efi") else ""
            return _Boot(False, (
                f"the EFI system partition ({p.number}) has {shown} but no \\EFI\\BOOT\\BOOTX64.EFI: copy it to "
                f"\\EFI\\BOOT\\BOOTX64.EFI{extra}, or run grub-install --force-extra-removable in the image "
                "(Debian installs only its own \\EFI\\debian\\, and a workstation's firmware has no boot entry "
                "for a disk it has never seen)"))
    return _Boot(False, f"the EFI system partition ({esps[0].number}) has no \\EFI\\BOOT\\BOOTX64.EFI and no other "
                        "boot loader: run grub-install --target=x86_64-efi --removable in the image")


def _boot_findings(bios: _Boot, uefi: _Boot) -> list[Finding]:
    if not bios.ok and not uefi.ok:
        return [Finding(Level.ERROR, "BIOS boot", f"not bootable by BIOS nor by UEFI: {bios.text}"),
                Finding(Level.ERROR, "UEFI boot", f"not bootable by UEFI nor by BIOS: {uefi.text}")]
    findings = []
    findings.append(Finding(Level.OK, "BIOS boot", bios.text) if bios.ok else Finding(
        Level.WARNING, "BIOS boot",
        f"will not boot on workstations that start in legacy BIOS (CSM) mode, only on UEFI ones: {bios.text}"))
    findings.append(Finding(Level.OK, "UEFI boot", uefi.text) if uefi.ok else Finding(
        Level.WARNING, "UEFI boot",
        f"will not boot on UEFI workstations (all recent PCs; those without CSM cannot boot it at all), only in "
        f"legacy BIOS mode: {uefi.text}"))
    return findings


# --- the root filesystem -------------------------------------------------------------------------------


def _by_hand(what: str) -> Finding:
    return Finding(Level.WARNING, "root filesystem", (
        f"cannot inspect the root filesystem ({what}; this check reads ext2/3/4 only): check by hand that "
        "/etc/fstab and the kernel command line name the root by UUID=, and that the initramfs logs in to "
        "the iSCSI disk from the iBFT (initramfs-tools: open-iscsi with ISCSI_AUTO=true in "
        "/etc/iscsi/iscsi.initramfs; dracut: the iscsi module and rd.iscsi.firmware=1)"))


def _check_root(disk: Disk, table: Table) -> list[Finding]:
    found = find_filesystems(disk, table)
    root = found.root
    findings = [Finding(Level.ERROR, "root filesystem", (
        f"partition {fs.part.number} has an {fs.version} superblock but debugfs cannot read it ({why}): "
        "run e2fsck -f on it (from a VM booted from the image)")) for fs, why in found.unreadable]
    if root is None:
        if findings:
            return findings
        what = "; ".join(found.others) or ("no ext filesystem with /etc/fstab" if found.exts else "no Linux filesystem found")
        return [_by_hand(what)]
    try:
        return _check_system(root, list(found.exts), disk.tmp)
    except Unreadable as e:
        return [Finding(Level.ERROR, "root filesystem", (
            f"reading the {root.version} root filesystem on partition {root.part.number} failed ({e}): run "
            "e2fsck -f on it (from a VM booted from the image)"))]


def _check_system(root: Ext, exts: list[Ext], tmp: Path) -> list[Finding]:
    findings = [Finding(Level.OK, "root filesystem", f"{root.version} on partition {root.part.number} (UUID {root.uuid})")]
    mounts = fstab(Files(root, None).read("/etc/fstab") or "")
    files = Files(root, separate_boot(mounts, root, exts))
    findings.append(_fstab_root(mounts, root.uuid))
    cmdlines, source = _kernel_command_lines(files)
    findings.append(_cmdline_root(cmdlines, source, root.uuid))
    findings += _check_initramfs(files, cmdlines, tmp)
    return findings


_DISK_NAMES = re.compile(r"/dev/(sd[a-z]+|vd[a-z]+|hd[a-z]+|xvd[a-z]+|nvme\d+n\d+|mmcblk\d+)")


def _judge_root(spec: str, root_uuid: str, where: str) -> tuple[Level, str]:
    """How `spec` (fstab's device field or root='s value) names the root filesystem, and what to change."""
    want = f"UUID={root_uuid}"
    value = spec.strip('"')
    named = value.removeprefix("UUID=").removeprefix("/dev/disk/by-uuid/")
    if named != value:
        if named.lower() != root_uuid:
            return Level.ERROR, (f"{where} names {value} but the root filesystem's UUID is {root_uuid}: "
                                 f"write {want}")
        return Level.OK, f"{where} names the root by {value}"
    if _DISK_NAMES.match(value):
        return Level.ERROR, (f"{where} names the root as {value}: the disk is a different device on each "
                             "workstation (an iSCSI disk becomes /dev/sdX in whatever order the kernel finds "
                             f"disks, after any local disk); write {want}")
    if value.startswith(("LABEL=", "/dev/disk/by-label/")):
        return Level.WARNING, (f"{where} names the root by {value}: a workstation's local disk with the same "
                               f"label could be taken instead; write {want}")
    if value.startswith(("PARTUUID=", "/dev/disk/by-partuuid/")):
        return Level.WARNING, (f"{where} names the root by {value}: it works, but it names the partition, "
                               f"not the filesystem, and this check cannot verify it; write {want}")
    if value.startswith("/dev/mapper/") or re.fullmatch(r"/dev/[^/]+/[^/]+", value):
        return Level.OK, f"{where} names the root by the device-mapper name {value} (the same on every workstation)"
    return Level.WARNING, f"{where} names the root as {value!r}, which this check does not know; write {want}"


def _fstab_root(fstab: dict[str, str], root_uuid: str) -> Finding:
    spec = fstab.get("/")
    if spec is None:
        return Finding(Level.WARNING, "fstab", (
            f"/etc/fstab has no line for / (or is missing): add UUID={root_uuid} / ext4 errors=remount-ro 0 1"))
    level, text = _judge_root(spec, root_uuid, "/etc/fstab")
    return Finding(level, "fstab", text)


def _kernel_command_lines(files: Files) -> tuple[list[str], str | None]:
    """The kernel command lines of the boot loader's menu entries, and the file they came from."""
    grub = files.read("/boot/grub/grub.cfg")
    if grub is not None:
        lines = [m.group(1) for m in re.finditer(r"^\s*linux(?:efi|16)?\s+\S+[ \t]*(.*)$", grub, re.MULTILINE)]
        return lines, "/boot/grub/grub.cfg"
    for conf in ("/boot/extlinux/extlinux.conf", "/boot/syslinux/syslinux.cfg", "/extlinux.conf"):
        text = files.read(conf)
        if text is not None:
            return [m.group(1) for m in re.finditer(r"^\s*append\s+(.*)$", text, re.MULTILINE | re.IGNORECASE)], conf
    return [], None


def _cmdline_root(cmdlines: list[str], source: str | None, root_uuid: str) -> Finding:
    if source is None:
        return Finding(Level.WARNING, "kernel command line", (
            "no /boot/grub/grub.cfg (nor extlinux.conf): could not check the kernel command line; run "
            f"update-grub in the image, and make sure the boot loader passes root=UUID={root_uuid}"))
    if not cmdlines:
        return Finding(Level.WARNING, "kernel command line", (
            f"{source} has no kernel entries (linux lines): run update-grub in the image"))
    judged = []
    for line in cmdlines:
        roots = [a.removeprefix("root=") for a in line.split() if a.startswith("root=")]
        if not roots:
            judged.append((Level.ERROR, (
                f"a kernel entry in {source} has no root=: add root=UUID={root_uuid} (GRUB_CMDLINE_LINUX in "
                "/etc/default/grub, then update-grub)")))
        else:
            level, text = _judge_root(roots[-1], root_uuid, f"the kernel command line in {source}")
            if level is not Level.OK and source.endswith("grub.cfg"):
                text += (" (update-grub writes root=UUID= unless /etc/default/grub sets GRUB_DISABLE_LINUX_UUID=true "
                         "or GRUB_DEVICE; remove that and run update-grub)")
            judged.append((level, text))
    order = [Level.ERROR, Level.WARNING, Level.OK]
    level, text = min(judged, key=lambda j: order.index(j[0]))
    bad = sum(1 for j in judged if j[0] is level)
    if level is not Level.OK and len(judged) > 1:
        text += f" ({bad} of {len(judged)} menu entries)"
    return Finding(level, "kernel command line", text)


# --- the initramfs -------------------------------------------------------------------------------------


def _find_initramfs(files: Files) -> str | None:
    for link in ("/initrd.img", "/boot/initrd.img"):
        real = files.resolve(link)
        if real is not None:
            return real
    names = [n for n in files.listdir("/boot") if n.startswith("initrd.img-")]
    return f"/boot/{max(names, key=version_key)}" if names else None


@dataclass(frozen=True)
class _Initramfs:
    path: str  # in the image
    names: frozenset[str]  # every path in it, relative, as lsinitramfs lists them
    unpacked: Path

    def has(self, *names: str) -> bool:
        return any(n in self.names for n in names)

    def read(self, name: str) -> str | None:
        # unmkinitramfs puts the main archive in main/ when early (microcode) archives precede it
        for base in (self.unpacked / "main", self.unpacked):
            p = base / name
            if p.is_file() and not p.is_symlink():
                return p.read_text(errors="replace")
        return None


def _check_initramfs(files: Files, cmdlines: list[str], tmp: Path) -> list[Finding]:
    path = _find_initramfs(files)
    if path is None:
        return [Finding(Level.ERROR, "initramfs", (
            "no initramfs (no /initrd.img, no /boot/initrd.img-*): install a kernel (linux-image-amd64) with "
            "initramfs-tools and open-iscsi in the image"))]
    dumped = tmp / "initrd.img"
    files.dump(path, dumped)
    listing = _run(["lsinitramfs", str(dumped)])
    names = frozenset(n.removeprefix("./") for n in listing.stdout.decode(errors="replace").splitlines())
    if listing.returncode != 0 or not names - {"", "."}:
        return [Finding(Level.ERROR, "initramfs", (
            f"{path} is not an initramfs lsinitramfs can read ({said(listing)}): rebuild it "
            "(update-initramfs -u -k all in the image)"))]
    unpacked = tmp / "unpacked"
    unpack = _run(["unmkinitramfs", str(dumped), str(unpacked)], env={**os.environ, "TMPDIR": str(tmp)})
    if unpack.returncode != 0:
        raise BackendFailure(f"unmkinitramfs could not unpack {path}, which lsinitramfs listed: {said(unpack)}")
    initramfs = _Initramfs(path, names, unpacked)
    if any(n.startswith("usr/lib/dracut/") for n in names):
        return _check_dracut(initramfs, cmdlines)
    return _check_initramfs_tools(initramfs, files, cmdlines)


def _shell_vars(text: str | None) -> dict[str, str]:
    """NAME=value lines of a shell fragment (as /etc/default files are written), quotes removed."""
    found = {}
    for line in (text or "").splitlines():
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\S*)", line)
        if m:
            found[m.group(1)] = m.group(2).strip("'\"")
    return found


def _check_initramfs_tools(initramfs: _Initramfs, files: Files, cmdlines: list[str]) -> list[Finding]:
    path = initramfs.path
    if not initramfs.has("sbin/iscsistart", "usr/sbin/iscsistart"):
        return [Finding(Level.ERROR, "initramfs", (
            f"the initramfs cannot log in to the iSCSI disk from the iBFT ({path} has no iscsistart): "
            f"{_ISCSI_FIX}"))]
    on_cmdline = any("iscsi_auto" in line.split() for line in cmdlines)
    auto = _shell_vars(initramfs.read("etc/iscsi.initramfs")).get("ISCSI_AUTO", "")
    if auto or on_cmdline:
        how = f"ISCSI_AUTO={auto}" if auto else "iscsi_auto on the kernel command line"
        findings = [Finding(Level.OK, "initramfs", f"{path}: initramfs-tools with iscsistart and {how} (logs in from the iBFT)")]
        return findings + list(_robustness(files))
    in_image = _shell_vars(files.read("/etc/iscsi/iscsi.initramfs")).get("ISCSI_AUTO", "")
    if in_image:
        why = (f"/etc/iscsi/iscsi.initramfs says ISCSI_AUTO={in_image} but {path} was built before: run "
               "update-initramfs -u in the image")
    elif initramfs.has("etc/iscsi.initramfs"):
        why = f"{path}'s etc/iscsi.initramfs does not set ISCSI_AUTO: {_ISCSI_FIX}"
    else:
        why = f"{path} has iscsistart but no etc/iscsi.initramfs: {_ISCSI_FIX}"
    return [Finding(Level.ERROR, "initramfs", f"the initramfs cannot log in to the iSCSI disk from the iBFT ({why})")]


_FIRMWARE_ON = re.compile(r"(?:rd\.iscsi\.firmware(?:=(?:1|yes|on|true))?|iscsi_firmware)")


def _check_dracut(initramfs: _Initramfs, cmdlines: list[str]) -> list[Finding]:
    path = initramfs.path
    # dracut's iscsi module logs in with iscsistart, or (with systemd in the initramfs, as Debian 12's
    # dracut 059 makes it) with iscsiadm through iscsid.
    if not (initramfs.has(*(f"{prefix}/{tool}" for prefix in ("sbin", "usr/sbin", "bin", "usr/bin")
                            for tool in ("iscsistart", "iscsiadm")))
            and any(n.endswith("parse-iscsiroot.sh") for n in initramfs.names)):
        return [Finding(Level.ERROR, "initramfs", (
            f"the initramfs cannot log in to the iSCSI disk from the iBFT ({path} is a dracut initramfs without "
            f"its iscsi module): {_DRACUT_FIX}"))]
    confs = sorted(n for n in initramfs.names if n.startswith("etc/cmdline.d/") and n.endswith(".conf"))
    for conf in confs:
        if any(_FIRMWARE_ON.fullmatch(arg) for arg in (initramfs.read(conf) or "").split()):
            return [Finding(Level.OK, "initramfs", f"{path}: dracut with the iscsi module and rd.iscsi.firmware=1 in {conf}")]
    with_flag = [line for line in cmdlines if any(_FIRMWARE_ON.fullmatch(a) for a in line.split())]
    if cmdlines and len(with_flag) == len(cmdlines):
        return [Finding(Level.OK, "initramfs", f"{path}: dracut with the iscsi module and rd.iscsi.firmware=1 on the kernel command line")]
    if with_flag:
        return [Finding(Level.WARNING, "initramfs", (
            f"{path}: dracut with the iscsi module, but only {len(with_flag)} of {len(cmdlines)} kernel entries "
            "pass rd.iscsi.firmware=1: the others cannot log in to the iSCSI disk; add it to GRUB_CMDLINE_LINUX "
            "in /etc/default/grub and run update-grub (or put it in /etc/cmdline.d/ and rebuild the initramfs)"))]
    return [Finding(Level.ERROR, "initramfs", (
        f"the initramfs cannot log in to the iSCSI disk from the iBFT ({path} has dracut's iscsi module but "
        "nothing turns on rd.iscsi.firmware): add rd.iscsi.firmware=1 to GRUB_CMDLINE_LINUX in /etc/default/grub "
        "and run update-grub, or write it to /etc/cmdline.d/iscsi.conf and rebuild with dracut --force --no-hostonly "
        "--add iscsi"))]


def _iscsid_setting(text: str, key: str) -> str | None:
    value = None
    for line in text.splitlines():
        m = re.match(r"\s*" + re.escape(key) + r"\s*=\s*(\S+)", line)
        if m:
            value = m.group(1)  # the last one counts, as in iscsid
    return value


def _udev_recovery_timeout(files: Files) -> int | None:
    """The longest recovery_tmo a udev rule in /etc/udev/rules.d gives iSCSI sessions (no Debian package
    sets one, so the packages' own rules are not read: that would be a hundred debugfs runs)."""
    found = []
    for name in files.listdir("/etc/udev/rules.d"):
        if name.endswith(".rules"):
            text = files.read(f"/etc/udev/rules.d/{name}") or ""
            found += [int(v) for v in re.findall(r'ATTR\{recovery_tmo\}\s*=\s*"(\d+)"', text)]
    return max(found, default=None)


def _robustness(files: Files) -> Iterable[Finding]:
    """Warnings about how the root's iSCSI session survives shutdown and outages, from open-iscsi's files
    and udev rules. NOP-Out settings are not checked: iscsid.conf's do not reach the root session, which
    iscsistart makes in the initramfs with its own, and nothing in the image says what those are."""
    default = _shell_vars(files.read("/etc/default/open-iscsi"))
    if default.get("ISCSI_ROOT_KEEP_ALL_SESSIONS_AT_SHUTDOWN") != "1":
        yield Finding(Level.WARNING, "iSCSI shutdown", (
            "/etc/default/open-iscsi does not set ISCSI_ROOT_KEEP_ALL_SESSIONS_AT_SHUTDOWN=1: if open-iscsi "
            "misjudges which session carries the root at shutdown, the OS logs out of its own root disk and "
            "hangs; set it to 1"))
    recovery = _udev_recovery_timeout(files)
    if recovery is None or recovery < 600:
        now = "the kernel's 120 s" if recovery is None else f"{recovery} s"
        yield Finding(Level.WARNING, "iSCSI timeouts", (
            f"the root disk's session (made by iscsistart in the initramfs, which does not read iscsid.conf) keeps "
            f"{now} of replacement timeout: a helper restart or server reboot longer than that fails the root "
            "filesystem; add a udev rule such as /etc/udev/rules.d/60-iscsi-root.rules with "
            'ACTION=="add|change", SUBSYSTEM=="iscsi_session", ATTR{recovery_tmo}="600"'))
    conf = files.read("/etc/iscsi/iscsid.conf")
    if conf is None:
        return
    replacement = _iscsid_setting(conf, "node.session.timeo.replacement_timeout") or "120"
    if not replacement.isdigit() or int(replacement) < 600:
        yield Finding(Level.WARNING, "iSCSI timeouts", (
            f"/etc/iscsi/iscsid.conf: node.session.timeo.replacement_timeout = {replacement} (120 if unset): a "
            "session iscsid makes fails its I/O when the server is away longer (a helper restart, a server "
            "reboot); set it to 600 or more"))
