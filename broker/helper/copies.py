"""Disk image files in the store, the helper's alone: reflink clones, sparse copies, the immutable flag, and
checksums of (sparse) disk images."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
from pathlib import Path

from ..shared.errors import StoreFull

FICLONE = 0x40049409
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010
_FLAGS = struct.Struct("i")  # the kernel reads and writes an int, whatever the ioctl's name says
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)


def clone(source: Path, destination: Path) -> None:
    """Reflink `source` to the new file `destination` (btrfs, XFS with reflink=1; same filesystem);
    nothing is left behind on failure. Raises StoreFull on ENOSPC, OSError when cloning is not possible."""
    with open(source, "rb") as src:
        clone_from(src.fileno(), destination)


def clone_from(source: int, destination: Path) -> None:
    """`clone`, from an open descriptor."""
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.ioctl(fd, FICLONE, source)
        os.fsync(fd)
    except OSError as e:
        os.unlink(destination)
        if e.errno == errno.ENOSPC:
            raise StoreFull("the store is full") from None
        raise
    finally:
        os.close(fd)


def clone_or_copy(source: Path, destination: Path) -> None:
    """A reflink clone where the filesystem can (instant, shares the blocks), else a copy that keeps holes."""
    with open(source, "rb") as src:
        clone_or_copy_from(src.fileno(), destination)


def clone_or_copy_from(source: int, destination: Path) -> None:
    """`clone_or_copy`, from an open descriptor: what is copied is the file that was opened and checked,
    whatever its name points to by now."""
    try:
        clone_from(source, destination)
    except StoreFull:
        raise
    except OSError:  # another filesystem, or no reflink here
        _copy_data_from(source, destination)


def _copy_data_from(source: int, destination: Path) -> None:
    """Copy the file's data extents (SEEK_DATA/SEEK_HOLE) into the new file `destination`, leaving its holes
    holes: a 20 GiB disk with 3 GiB written copies 3 GiB and takes 3 GiB. Removed again on failure."""
    size = os.fstat(source).st_size
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        at = 0
        while at < size:
            try:
                data = os.lseek(source, at, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: only a hole is left
                    raise
                break
            end = os.lseek(source, data, os.SEEK_HOLE)
            while data < end:
                data += _copy_range(source, fd, data, min(end - data, 1 << 30))
            at = end
        os.ftruncate(fd, size)
        os.fsync(fd)
    except BaseException:
        os.unlink(destination)
        raise
    finally:
        os.close(fd)


def copy_sparse(source: Path, destination: Path, size: int) -> None:
    """Copy `size` bytes of a file or block device into the new file `destination`, leaving holes where
    the source reads as zeros (a disk is mostly empty)."""
    with open(source, "rb") as src, open(destination, "xb") as dst:
        at = 0
        while at < size:
            block = src.read(min(_CHUNK, size - at))
            if not block:
                raise OSError(errno.EIO, f"{source} ended at byte {at} of {size}")
            if block == _ZEROS[:len(block)]:
                dst.seek(len(block), os.SEEK_CUR)
            else:
                dst.write(block)
            at += len(block)
        dst.truncate(size)
        dst.flush()
        os.fsync(dst.fileno())


def _copy_range(source: int, destination: int, offset: int, length: int) -> int:
    """Copy up to `length` bytes at `offset` from one file to the same offset of another; returns how many.
    copy_file_range lets the kernel do it (a server-side copy on NFS, no trip through user space); it
    refuses to cross filesystems (EXDEV), and then it is read and written here, a block of zeros left a
    hole of the new file: a filesystem without SEEK_DATA (9p, some NFS) shows a sparse image as all data."""
    try:
        copied = os.copy_file_range(source, destination, length, offset, offset)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        block = os.pread(source, min(length, _CHUNK), offset)
        if block == _ZEROS[:len(block)]:
            copied = len(block)
        else:
            copied = os.pwrite(destination, block, offset)
    if copied == 0:
        raise OSError(errno.EIO, f"the source ended at byte {offset}")
    return copied


def set_immutable(path: Path, immutable: bool) -> bool:
    """Set or clear the file's immutable flag (chattr +i: not even root may change, rename or delete it
    until it is cleared). Returns False where the filesystem has no such flag (tmpfs, overlayfs)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        flags = _FLAGS.unpack(fcntl.ioctl(fd, FS_IOC_GETFLAGS, _FLAGS.pack(0)))[0]
        wanted = flags | FS_IMMUTABLE_FL if immutable else flags & ~FS_IMMUTABLE_FL
        if wanted != flags:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, _FLAGS.pack(wanted))
        return True
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)


def is_immutable(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return bool(_FLAGS.unpack(fcntl.ioctl(fd, FS_IOC_GETFLAGS, _FLAGS.pack(0)))[0] & FS_IMMUTABLE_FL)
    except OSError:
        return False
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    """The file's SHA-256, as sha256sum prints it. Holes are hashed as zeros without being read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        at = 0
        while at < size:
            try:
                data_at = os.lseek(f.fileno(), at, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: only a hole is left
                    raise
                data_at = size
            while at < data_at:  # a hole
                n = min(_CHUNK, data_at - at)
                digest.update(_ZEROS[:n])
                at += n
            if at >= size:
                break
            hole_at = os.lseek(f.fileno(), at, os.SEEK_HOLE)
            f.seek(at)
            while at < hole_at:
                block = f.read(min(_CHUNK, hole_at - at))
                if not block:
                    raise OSError(errno.EIO, f"{path} ended early")
                digest.update(block)
                at += len(block)
    return digest.hexdigest()
