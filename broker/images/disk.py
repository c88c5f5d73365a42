"""A raw disk image read in place: its partition table (sfdisk) and its ext2/3/4 filesystems (debugfs at
the partition's byte offset, `FILE?offset=N`), with no loop device and no mount (the host kernel may have
neither to spare). Shared by `images check` (is this disk bootable?) and the helper's publish (the
version's own kernel and initrd, for netroot).

Everything here reads; nothing writes into the image. Problems of the image raise `Unreadable` (the
callers turn them into findings or into "not found"); a tool that is missing or hangs raises
BackendFailure (a problem of the host).
"""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..shared.errors import BackendFailure

SECTOR = 512

# The commands this module runs, and the Debian package that has each.
TOOLS = {"sfdisk": "fdisk", "debugfs": "e2fsprogs"}

BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"
ESP_GPT = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ESP_DOS = "ef"
EXTENDED_DOS = {"5", "f", "85"}

RUN_TIMEOUT = 300  # seconds: dumping and unpacking a large initramfs is the slowest step

# Paths handed to debugfs inside its request's double quotes: a name from the image with a quote, a
# backslash or a control character in it could change the request (or the file it dumps to), so such a
# name is never read. No distribution names a kernel, an initrd or a configuration file that way.
_SAFE_PATH = re.compile(r"[A-Za-z0-9 ._+,:@%=~/-]+")


class Unreadable(Exception):
    """The image cannot be read as asked (no partition table, a filesystem debugfs cannot open, a name it
    must not be asked for): a problem of the image, not of the host."""


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        packages: Mapping[str, str] = TOOLS) -> subprocess.CompletedProcess[bytes]:
    """Run a tool (argument list, no shell) and return what it did, whatever its exit status; raises
    BackendFailure if it is not installed (naming the package in `packages`) or takes too long."""
    try:
        return subprocess.run(list(argv), capture_output=True, timeout=RUN_TIMEOUT, env=env, cwd=cwd, check=False)
    except FileNotFoundError:
        raise BackendFailure(f"{argv[0]} is not installed: apt-get install {packages.get(argv[0], argv[0])}") from None
    except subprocess.TimeoutExpired:
        raise BackendFailure(f"{argv[0]} did not finish within {RUN_TIMEOUT} s") from None


def said(result: subprocess.CompletedProcess[bytes]) -> str:
    """A tool's complaint, one line, without the version banner debugfs always prints."""
    lines = [line.strip() for line in result.stderr.decode(errors="replace").splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith("debugfs ")) or f"exit status {result.returncode}"


# --- the disk and its partitions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str  # GPT type GUID or MBR type byte in hex, lower case
    attrs: str = ""


@dataclass(frozen=True)
class Table:
    label: str  # "gpt" or "dos" (or whatever else sfdisk found)
    partitions: tuple[Partition, ...]


class Disk:
    """The image file, read in place. Tools see it through `link`, a symbolic link in a directory of the
    caller's, so that a name with `?` (debugfs's io options) or `@@` (mtools' offset) in it cannot be
    misread. `link` is made by `open_link`."""

    def __init__(self, path: Path, tmp: Path) -> None:
        self.path = path
        self.tmp = tmp
        self.link = tmp / "disk.img"

    def open_link(self) -> None:
        self.link.symlink_to(self.path)

    def read(self, offset: int, length: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    def size(self) -> int:
        return self.path.stat().st_size


def read_table(disk: Disk) -> Table:
    """The partition table as sfdisk reads it (any label, possibly empty); Unreadable with sfdisk's words
    if it finds none."""
    result = run(["sfdisk", "--json", str(disk.link)])
    if result.returncode != 0:
        raise Unreadable(said(result).replace(str(disk.link), disk.path.name))
    data: dict[str, Any] = json.loads(result.stdout)["partitiontable"]
    sector = int(data.get("sectorsize", SECTOR))
    parts = []
    for entry in data.get("partitions", []):
        number = int(re.sub(r".*?(\d+)$", r"\1", entry["node"]))
        parts.append(Partition(number, int(entry["start"]) * sector, int(entry["size"]) * sector,
                               str(entry["type"]).lower(), str(entry.get("attrs", ""))))
    return Table(str(data["label"]), tuple(parts))


# --- ext filesystems -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inode:
    type: str  # debugfs's word: "regular", "directory", "symlink", ...
    link: str | None  # the target of a fast symlink


class Ext:
    """One ext2/3/4 filesystem inside the image, read through debugfs at its byte offset (read-only)."""

    def __init__(self, disk: Disk, part: Partition, uuid: str, version: str) -> None:
        self.disk = disk
        self.part = part
        self.uuid = uuid
        self.version = version

    def _debugfs(self, command: str, *paths: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        for path in paths:
            if not _SAFE_PATH.fullmatch(path):
                raise Unreadable(f"a name debugfs is not asked for: {path!r}")
        request = " ".join([command, *(f'"{p}"' for p in paths)])
        result = run(["debugfs", "-R", request, f"{self.disk.link.absolute()}?offset={self.part.start}"], cwd=cwd)
        stderr = result.stderr.decode(errors="replace")
        if result.returncode != 0 or "while trying to open" in stderr or "while opening filesystem" in stderr:
            raise Unreadable(said(result))
        return result

    def stat(self, path: str) -> Inode | None:
        result = self._debugfs("stat", path)
        if not result.stdout:
            return None  # "File not found by ext2_lookup" (debugfs exits 0 all the same)
        text = result.stdout.decode(errors="replace")
        kind = re.search(r"Type: (\w+)", text)
        link = re.search(r'Fast link dest: "(.*)"', text)
        return Inode(kind.group(1) if kind else "unknown", link.group(1) if link else None)

    def cat(self, path: str) -> bytes:
        return self._debugfs("cat", path).stdout

    def dump(self, path: str, dest: Path) -> None:
        # Written by its name in its own directory: only names from the image go through the request.
        self._debugfs("dump", path, dest.name, cwd=dest.parent)

    def listdir(self, path: str) -> list[str]:
        # `ls -p` prints /inode/mode/uid/gid/name/size/ per entry, unambiguous for any name without a slash
        out = self._debugfs("ls -p", path).stdout.decode(errors="replace")
        names = [line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6]
        return [n for n in names if n not in (".", "..")]


MAX_LINKS = 16  # symbolic links followed for one path; more is a loop


class Files:
    """An installed system's file tree: its root filesystem, and a separate /boot filesystem if fstab
    mounts one. Symlinks are followed here (debugfs follows those in the middle of a path, not the last)."""

    def __init__(self, root: Ext, boot: Ext | None) -> None:
        self.root = root
        self.boot = boot

    def _where(self, path: str) -> tuple[Ext, str]:
        if self.boot is not None and (path == "/boot" or path.startswith("/boot/")):
            return self.boot, path[len("/boot"):] or "/"
        return self.root, path

    def follow(self, path: str) -> tuple[str, Inode] | None:
        """What `path` names after its symlinks (each relative to the link's directory, or absolute from the
        system's root): its path and inode; None if nothing is there, or after MAX_LINKS links (a loop)."""
        for _ in range(MAX_LINKS):
            fs, inner = self._where(path)
            inode = fs.stat(inner)
            if inode is None:
                return None
            if inode.type != "symlink":
                return path, inode
            target = inode.link if inode.link is not None else fs.cat(inner).decode(errors="replace")
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        return None

    def resolve(self, path: str) -> str | None:
        """The path of what `path` names after its symlinks; None if none (see `follow`)."""
        found = self.follow(path)
        return found[0] if found is not None else None

    def read(self, path: str) -> str | None:
        real = self.resolve(path)
        if real is None:
            return None
        fs, inner = self._where(real)
        return fs.cat(inner).decode(errors="replace")

    def dump(self, path: str, dest: Path) -> None:
        fs, inner = self._where(path)
        fs.dump(inner, dest)

    def listdir(self, path: str) -> list[str]:
        real = self.resolve(path)
        if real is None:
            return []
        fs, inner = self._where(real)
        return fs.listdir(inner)


def ext_superblock(disk: Disk, part: Partition) -> tuple[str, str] | None:
    """(UUID, "ext2"/"ext3"/"ext4") if `part` starts with an ext superblock, else None."""
    sb = disk.read(part.start + 1024, 1024)
    if len(sb) < 1024 or sb[56:58] != b"\x53\xef":
        return None
    compat = int.from_bytes(sb[92:96], "little")
    incompat = int.from_bytes(sb[96:100], "little")
    version = "ext4" if incompat & (0x40 | 0x80 | 0x200) else "ext3" if compat & 0x4 else "ext2"
    return str(uuid.UUID(bytes=sb[104:120])), version


def other_filesystem(disk: Disk, part: Partition) -> str | None:
    if disk.read(part.start, 4) == b"XFSB":
        return "XFS"
    if disk.read(part.start + 0x10040, 8) == b"_BHRfS_M":
        return "btrfs"
    if disk.read(part.start + SECTOR, 8) == b"LABELONE":
        return "LVM"
    if disk.read(part.start, 6) == b"LUKS\xba\xbe":
        return "LUKS (encrypted)"
    return None


@dataclass(frozen=True)
class Filesystems:
    """What the data partitions of a disk hold: the ext filesystems, the first of them with /etc/fstab (the
    installed system's root), the other filesystems named, and the ext ones debugfs could not read."""

    exts: tuple[Ext, ...]
    root: Ext | None
    others: tuple[str, ...]  # "partition 3 holds XFS"
    unreadable: tuple[tuple[Ext, str], ...]  # (filesystem, debugfs's complaint)


def find_filesystems(disk: Disk, table: Table) -> Filesystems:
    candidates = [p for p in table.partitions if p.type not in (BIOS_BOOT, ESP_GPT, ESP_DOS, *EXTENDED_DOS)]
    exts: list[Ext] = []
    others: list[str] = []
    for p in candidates:
        sb = ext_superblock(disk, p)
        if sb is not None:
            exts.append(Ext(disk, p, *sb))
        elif (kind := other_filesystem(disk, p)) is not None:
            others.append(f"partition {p.number} holds {kind}")
    root = None
    unreadable: list[tuple[Ext, str]] = []
    for fs in exts:
        try:
            if fs.stat("/etc/fstab") is not None:
                root = fs
                break
        except Unreadable as e:
            unreadable.append((fs, str(e)))
    return Filesystems(tuple(exts), root, tuple(others), tuple(unreadable))


def fstab(text: str) -> dict[str, str]:
    """Mount point -> the device field, for each line of /etc/fstab."""
    mounts = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            mounts[fields[1]] = fields[0]
    return mounts


def separate_boot(mounts: dict[str, str], root: Ext, exts: Sequence[Ext]) -> Ext | None:
    """The ext filesystem fstab mounts on /boot (by UUID), if it is another one than the root."""
    spec = mounts.get("/boot", "")
    wanted = spec.removeprefix("UUID=").removeprefix("/dev/disk/by-uuid/").strip('"').lower()
    return next((fs for fs in exts if fs is not root and fs.uuid == wanted), None)


def version_key(name: str) -> list[tuple[int, str]]:
    """Sorts names with version numbers in them as versions: vmlinuz-6.10 after vmlinuz-6.9."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", name)]
