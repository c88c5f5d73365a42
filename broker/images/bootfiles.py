"""A version's own kernel and initrd, found in the disk image and read out of it at publish.

A netroot image boots a kernel and initrd that iPXE fetches over HTTP, then mounts the iSCSI disk; they
must be the ones installed in that disk (the initrd's and the root's modules are built for that kernel),
so they come from the version itself, never from somewhere a site keeps in step by hand.

Read in place, like `images check` (broker/images/disk.py): the partition table with sfdisk, the ext2/3/4
root (the filesystem with /etc/fstab, with the /boot filesystem its fstab mounts) with debugfs, symbolic
links followed here with a bound. Looked for, in this order: Debian's links `/vmlinuz` and `/initrd.img`
(to boot/vmlinuz-RELEASE, relative or absolute), `/boot/vmlinuz` and `/boot/initrd.img`, then the newest
`/boot/vmlinuz-RELEASE` that has its `initrd.img-RELEASE` (Debian) or `initramfs-RELEASE.img` (Fedora). An
ext filesystem without /etc/fstab is looked at as a /boot filesystem of its own (the same names at its
top). Other filesystems (XFS, btrfs, LVM, ...) are not read: nothing is found there.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from ..shared.identifiers import BOOT_FILES
from .disk import Disk, Files, Unreadable, find_filesystems, fstab, read_table, separate_boot, version_key

KERNEL, INITRD = BOOT_FILES  # the files kept beside a version, by these names

LOOKED_FOR = ("/vmlinuz and /initrd.img, /boot/vmlinuz and /boot/initrd.img, or the newest /boot/vmlinuz-RELEASE "
              "with /boot/initrd.img-RELEASE or /boot/initramfs-RELEASE.img")


class NotFound(Exception):
    """The image holds no kernel and initrd this module can read; the message says what was looked for,
    where, and what was found instead."""


@dataclass(frozen=True)
class BootFiles:
    kernel: str  # where they were in the image, after links: /boot/vmlinuz-6.1.0-18-amd64
    initrd: str
    directory: Path  # holds them as `vmlinuz` and `initrd.img`

    def path(self, name: str) -> Path:
        return self.directory / name


def extract(image: Path, work: Path) -> BootFiles:
    """Find the kernel and initrd installed in the raw disk image `image` and copy them into `work` (an
    empty directory of the caller's, which also gets a link to the image for the tools). Raises NotFound if
    there are none to read, BackendFailure if sfdisk or debugfs is missing or hangs. Reads the image only."""
    disk = Disk(image, work)
    disk.open_link()
    try:
        table = read_table(disk)
    except Unreadable as e:
        raise NotFound(f"no partition table ({e}): the image must be a whole disk (GPT or MBR)") from None
    if table.label not in ("gpt", "dos") or not table.partitions:
        raise NotFound(f"no GPT or MBR partition in the image (sfdisk found a {table.label} table with "
                       f"{len(table.partitions)} partitions)")
    found = find_filesystems(disk, table)
    places: list[tuple[Files, str, str]] = []  # (file tree, its boot directory, where, in words)
    if found.root is not None:
        root = found.root
        mounts = fstab(Files(root, None).read("/etc/fstab") or "")
        places.append((Files(root, separate_boot(mounts, root, found.exts)), "/boot",
                       f"the {root.version} root on partition {root.part.number}"))
    for fs in found.exts:
        if fs is not found.root:
            places.append((Files(fs, None), "/", f"the {fs.version} filesystem on partition {fs.part.number}"))
    notes: list[str] = [f"debugfs cannot read partition {fs.part.number} ({why})" for fs, why in found.unreadable]
    for files, boot, where in places:
        try:
            pair = _find_pair(files, boot, notes)
            if pair is not None:
                return _copy_out(files, *pair, work)
        except Unreadable as e:
            notes.append(f"reading {where} failed ({e})")
    if not places:
        raise NotFound("no ext2/3/4 filesystem to look in (" + "; ".join([*found.others, *notes] or ["no Linux filesystem found"])
                       + "): the kernel and initrd are read from an ext2/3/4 root or /boot filesystem only")
    raise NotFound(f"no kernel and initrd: looked for {LOOKED_FOR} in "
                   + " and in ".join(where for _, _, where in places) + "".join(f"; {n}" for n in notes))


def _regular(files: Files, path: str) -> str | None:
    """The path of the regular file `path` names after its links, or None."""
    found = files.follow(path)
    return found[0] if found is not None and found[1].type == "regular" else None


def _find_pair(files: Files, boot: str, notes: list[str]) -> tuple[str, str] | None:
    links = [("/vmlinuz", "/initrd.img")]
    if boot != "/":
        links.append((f"{boot}/vmlinuz", f"{boot}/initrd.img"))
    for kernel_link, initrd_link in links:
        kernel, initrd = _regular(files, kernel_link), _regular(files, initrd_link)
        if kernel is not None and initrd is not None:
            return kernel, initrd
    names = files.listdir(boot)
    # Newest first; a kernel without its initrd cannot mount an iSCSI root, so an older one that has its
    # initrd is taken instead (its modules are installed too: they go with its package).
    for name in sorted((n for n in names if n.startswith("vmlinuz-")), key=version_key, reverse=True):
        release = name.removeprefix("vmlinuz-")
        kernel = _regular(files, posixpath.join(boot, name))
        if kernel is None:
            continue
        initrds = [f"initrd.img-{release}", f"initramfs-{release}.img"]
        initrd = next((found for n in initrds if n in names
                       and (found := _regular(files, posixpath.join(boot, n))) is not None), None)
        if initrd is not None:
            return kernel, initrd
        notes.append(f"{posixpath.join(boot, name)} has no {' or '.join(initrds)} beside it")
    return None


def _copy_out(files: Files, kernel: str, initrd: str, work: Path) -> BootFiles:
    for path, name in ((kernel, KERNEL), (initrd, INITRD)):
        files.dump(path, work / name)
        if not (work / name).is_file() or (work / name).stat().st_size == 0:
            raise NotFound(f"{path} is empty, or debugfs could not read it out of the image")
    return BootFiles(kernel, initrd, work)
