"""Writing files that must never be seen half-written or with wider permissions than intended: the
helper's session records and store metadata, the broker's certificate and key."""

from __future__ import annotations

import os
import secrets
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
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
