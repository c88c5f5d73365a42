"""The on-disk layout of the store: golden image versions, overlays, backups and their metadata.

The helper derives every path here from validated identifiers; nothing outside this module builds a
path into the store. Files only: device work belongs to the storage backends.

    <root>/images/<image>/v<N>.img      golden versions, mode 0444, never rewritten
    <root>/images/<image>/current       the version new overlays are made from
    <root>/overlays/<image>/<label>/    one user's overlay: meta.json plus the backend's disk file
    <root>/backups/<image>/<label>/<stamp>/   overlays kept by reset
    <root>/tmp/                         scratch on the same filesystem, for atomic renames
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import BadIdentifier, Conflict, UnknownImage
from .files import write_atomically
from .identifiers import check_version


@dataclass(frozen=True)
class OverlayMeta:
    user: str
    image: str
    version: int
    created: float


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images"
        self.overlays = root / "overlays"
        self.backups = root / "backups"
        self.tmp = root / "tmp"

    def prepare(self) -> None:
        """Create the layout (idempotent); the store root must exist already."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"store path {self.root} does not exist; create it (btrfs or XFS for the reflink backend)")
        for d in (self.images, self.overlays, self.backups, self.tmp):
            d.mkdir(mode=0o700, exist_ok=True)

    # golden images

    def current_version(self, image: str) -> int:
        try:
            text = (self.images / image / "current").read_text().strip()
        except FileNotFoundError:
            raise UnknownImage(f"image {image!r} has no published version") from None
        try:
            return check_version(int(text))
        except (ValueError, BadIdentifier):
            raise UnknownImage(f"image {image!r} has a damaged 'current' file") from None

    def image_file(self, image: str, version: int) -> Path:
        return self.images / image / f"v{version}.img"

    def publish(self, image: str, source: Path) -> int:
        """Store `source` as the next version of `image` and make it current; returns the version."""
        size = source.stat().st_size
        if size == 0 or size % 512:
            raise BadIdentifier(f"{source} is {size} bytes; a disk image must be a non-zero multiple of 512")
        directory = self.images / image
        directory.mkdir(mode=0o700, exist_ok=True)
        versions = [int(p.stem[1:]) for p in directory.glob("v*.img") if p.stem[1:].isdigit()]
        version = max(versions, default=0) + 1
        tmp = self.tmp / f"publish-{image}-{version}"
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, self.image_file(image, version))
        write_atomically(directory / "current", f"{version}\n".encode(), 0o644)
        return version

    # overlays

    def overlay_dir(self, image: str, label: str) -> Path:
        return self.overlays / image / label

    def read_meta(self, overlay: Path) -> OverlayMeta | None:
        try:
            data = json.loads((overlay / "meta.json").read_text())
        except FileNotFoundError:
            return None
        return OverlayMeta(**data)

    def claim_overlay_dir(self, image: str, label: str, user: str) -> Path:
        """The overlay directory for (image, label), refusing one that belongs to another user."""
        overlay = self.overlay_dir(image, label)
        meta = self.read_meta(overlay)
        if meta is not None and meta.user != user:
            raise Conflict(f"overlay label {label!r} of image {image!r} belongs to another user")
        return overlay

    def new_overlay_workdir(self, image: str, label: str) -> Path:
        """An empty scratch directory to build an overlay in before it is renamed into place."""
        work = self.tmp / f"overlay-{image}-{label}-{os.getpid()}-{time.monotonic_ns()}"
        work.mkdir(mode=0o700)
        return work

    def commit_overlay(self, work: Path, meta: OverlayMeta, label: str) -> Path:
        write_atomically(work / "meta.json", json.dumps(asdict(meta)).encode(), 0o600)
        target = self.overlay_dir(meta.image, label)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(work, target)
        return target

    def move_to_backup(self, overlay: Path, image: str, label: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        parent = self.backups / image / label
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        backup = parent / stamp
        n = 1
        while backup.exists():
            n += 1
            backup = parent / f"{stamp}.{n}"
        os.rename(overlay, backup)
        return backup

    def list_overlays(self) -> list[tuple[Path, OverlayMeta]]:
        found = []
        for overlay in sorted(self.overlays.glob("*/*")):
            meta = self.read_meta(overlay)
            if meta is not None:
                found.append((overlay, meta))
        return found

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize
