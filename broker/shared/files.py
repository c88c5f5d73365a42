"""Durable files the helper and the broker share: writing files that must never be seen half-written or
with wider permissions than intended (session records, store metadata, the broker's certificate and key),
and the directory check both sides make of where they keep them."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content, never a mix.

    The file is created with `mode` itself (the umask can only narrow it, and fchmod makes it exact),
    written and synced under a fresh temporary name in the same directory, then renamed; the directory is
    synced so the rename survives a crash too. On failure the temporary file is removed."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def rename_durably(source: Path, destination: Path) -> None:
    """Rename, then sync both directories, so that after a power cut the entry is in one place: the new
    one once this returns. (A rename is otherwise only in the page cache for a few seconds: a user's disk
    renamed into place, then written to by its workstation, could come back in the scratch directory.)"""
    os.rename(source, destination)
    sync_directory(destination.parent)
    if source.parent != destination.parent:
        sync_directory(source.parent)


def remove_durably(path: Path) -> None:
    """Unlink a file (absent is fine), then sync its directory, so that after a power cut it stays gone: a
    revoked session's record must not come back and bring its ACL with it."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    sync_directory(path.parent)


def others_can_write(directory: Path, ancestors: bool = True) -> str | None:
    """Why a directory the helper (root) works in is unsafe, or None: it, or a directory above it, is not
    root's or can be written by a group or others (a sticky directory above it, such as /tmp, is fine:
    nobody can rename root's entries in it). Whoever can write there could swap an entry for a link
    between root's check and its use: a socket for /etc/shadow, a disk image for a device."""
    resolved = directory.resolve()
    for path in [resolved, *(resolved.parents if ancestors else [])]:
        st = os.stat(path)
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if st.st_uid != 0 or (st.st_mode & 0o022 and not (sticky and path != resolved)):
            return (f"{path} is writable by others (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): "
                    f"make it root's and not group- or world-writable (chown root {path}; chmod go-w {path})")
    return None


def sync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
