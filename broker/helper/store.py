"""The on-disk layout of the store: golden image versions, overlays, backups and their metadata.

The helper derives every path here from validated identifiers; nothing outside this module builds a
path into the store. Files only: device work belongs to the storage backends.

    <root>/images/<image>/v<N>.img      golden versions, mode 0444 and immutable (chattr +i), never rewritten
    <root>/images/<image>/v<N>.sha256   its checksum, as sha256sum prints it
    <root>/images/<image>/v<N>.vmlinuz  its own kernel and initrd, read out of it at publish (netroot), as
    <root>/images/<image>/v<N>.initrd.img   immutable as the version; absent if the image has none
    <root>/images/<image>/current       the version new overlays are made from
    <root>/overlays/<image>/<label>/    one user's overlay: meta.json plus the backend's disk file
    <root>/backups/<image>/<label>/<stamp>/   overlays kept by reset
    <root>/tmp/                         scratch on the same filesystem, for atomic renames
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..shared.errors import BadIdentifier, Conflict, UnknownImage
from ..shared.files import others_can_write, remove_durably, rename_durably, write_atomically
from ..shared.identifiers import BOOT_FILES, check_version
from .copies import clone_or_copy, set_immutable, sha256_of
from .faults import crash_point


BACKEND_MARK = "backend"  # in the store's root: the backend its overlays are made with
BACKUP_STAMP = "%Y%m%dT%H%M%S"  # a backup's name: when it was set aside, UTC


@dataclass(frozen=True)
class OverlayMeta:
    user: str
    image: str
    version: int
    created: float

    @classmethod
    def from_json(cls, data: object) -> OverlayMeta:
        if not isinstance(data, dict) or set(data) != {"user", "image", "version", "created"}:
            raise ValueError("expected the fields created, image, user, version")
        user, image, version, created = data["user"], data["image"], data["version"], data["created"]
        if not (isinstance(user, str) and isinstance(image, str) and isinstance(version, int)
                and isinstance(created, (int, float)) and not isinstance(version, bool)):
            raise ValueError("a field has the wrong type")
        return cls(user, image, version, float(created))


class DamagedMeta(Conflict):
    """An overlay's or backup's meta.json that cannot be read: what it pins and whose it is are unknown."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is damaged ({reason[:120]}): the disk next to it is kept as it is; repair the "
                         "file (fields user, image, version, created) or move the directory out of the store")
        self.path = path


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

    def made_with(self) -> str | None:
        """The backend the store's overlays are made with (noted at the first start), or None."""
        try:
            return (self.root / BACKEND_MARK).read_text().strip()
        except FileNotFoundError:
            return None

    def mark_made_with(self, backend: str) -> None:
        write_atomically(self.root / BACKEND_MARK, f"{backend}\n".encode(), 0o600)

    def some_overlay(self) -> Path | None:
        """An overlay or backup directory, if the store has any."""
        return next(itertools.chain(self.overlays.glob("*/*"), self.backups.glob("*/*/*")), None)

    def unsafe_directory(self) -> str | None:
        """Why the store cannot be trusted, or None: the root (and every directory above it) and each
        directory of the layout down to the overlays must be root's alone (see files.others_can_write)."""
        problem = others_can_write(self.root)
        for directory in [*self.root.glob("*"), *self.root.glob("*/*"), *self.root.glob("*/*/*")]:
            if problem:
                break
            if directory.is_dir() and not directory.is_symlink():
                problem = others_can_write(directory, ancestors=False)
        return problem

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

    def has_current(self, image: str) -> bool:
        return (self.images / image / "current").is_file()

    def image_file(self, image: str, version: int) -> Path:
        return self.images / image / f"v{version}.img"

    def versions(self, image: str) -> list[int]:
        """The published versions of `image` still in the store, oldest first."""
        found = (p.stem[1:] for p in (self.images / image).glob("v*.img"))
        return sorted(int(v) for v in found if v.isdigit())

    def pins(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(image, version) -> (overlays, backups) made from it: what a retire must wait for."""
        overlays = Counter((m.image, m.version) for _, m in self.list_overlays())
        backups = Counter((m.image, m.version) for _, m in self.list_backups())
        return {key: (overlays[key], backups[key]) for key in overlays | backups}

    def retire(self, image: str, version: int | None) -> list[int]:
        """Delete one version of `image` (not the current one), or every version and `current` (None).
        Refuses (Conflict) while an overlay or a backup was made from a version it would delete, naming
        them. Returns the versions deleted."""
        versions = self.versions(image)
        if not versions:
            raise UnknownImage(f"image {image!r} has no published version")
        if version is not None:
            if version not in versions:
                raise UnknownImage(f"image {image!r} has no version {version}; it has {_listed(versions)}")
            if version == self.current_version(image):
                raise Conflict(f"v{version} is the current version of {image!r}: publish a newer one first, "
                               "or retire the whole image")
        doomed = versions if version is None else [version]
        damaged = self.damaged(image)
        if damaged:
            raise Conflict(f"cannot tell which versions of {image!r} are in use: {damaged[0].path} is damaged; "
                           "repair it (fields user, image, version, created) or move that directory out of the store")
        pins = self.pins()
        holders = [f"v{v}: {pins[image, v][0]} overlays, {pins[image, v][1]} backups"
                   for v in doomed if (image, v) in pins]
        if holders:
            users = sorted({m.user for _, m in self.list_overlays() + self.list_backups()
                            if m.image == image and m.version in doomed})
            raise Conflict(f"{image!r} is still in use ({'; '.join(holders)}) by {', '.join(users)}; "
                           "rebase or reset users with overlays; backups go after [store] backup_days")
        if version is None:
            remove_durably(self.images / image / "current")
        for v in doomed:
            self._remove_version(image, v)
        return doomed

    def _remove_version(self, image: str, version: int) -> None:
        # The image first: from then on, whatever is left of the version is a leftover without its image,
        # which discard_unfinished removes if this is interrupted.
        _remove_immutable(self.image_file(image, version))
        remove_durably(self.checksum_file(image, version))
        for name in BOOT_FILES:
            _remove_immutable(self.boot_file(image, version, name))
        remove_durably(self._publishing_mark(image, version))

    def discard_unfinished(self, image: str) -> list[int]:
        """Remove what an interrupted publish left in images/<image>/: a version still marked as being
        published (`v<N>.publishing`, made before the version is renamed into place and removed once it is
        current) that never became current, and checksums, boot files and marks without their image. A finished
        version is never removed here, whatever `current` says, nor one an overlay or backup was made
        from. Returns the versions removed."""
        directory = self.images / image
        current = self.current_version(image) if self.has_current(image) else None
        marked = [v for v in self.versions(image) if self._publishing_mark(image, v).exists() and v != current]
        pins = self.pins() if marked else {}  # reads every overlay's metadata: only when there is a candidate
        unfinished = [v for v in marked if (image, v) not in pins]
        for v in unfinished:
            self._remove_version(image, v)
        companions = [*directory.glob("v*.sha256"), *directory.glob("v*.publishing"),
                      *(path for name in BOOT_FILES for path in directory.glob(f"v*.{name}"))]
        for leftover in companions:
            version = leftover.name.split(".", 1)[0]  # v<N>
            if not (directory / f"{version}.img").exists():
                _remove_immutable(leftover)
        if current is not None and self._publishing_mark(image, current).exists():
            remove_durably(self._publishing_mark(image, current))  # it became current: finished
        return unfinished

    def _publishing_mark(self, image: str, version: int) -> Path:
        return self.images / image / f"v{version}.publishing"

    def set_current(self, image: str, version: int) -> int:
        """Make a published version the one new overlays are made from (overlays keep theirs). Returns the
        version that was current before."""
        versions = self.versions(image)
        if version not in versions:
            raise UnknownImage(f"image {image!r} has no version {version}; it has {_listed(versions) or 'none'}")
        previous = self.current_version(image) if self.has_current(image) else 0
        write_atomically(self.images / image / "current", f"{version}\n".encode(), 0o644)
        return previous

    def publish(self, image: str, source: Path) -> tuple[int, str, bool]:
        """Store `source` as the next version of `image` and make it current (stage, checksum, commit in
        one go: the helper runs the slow first two outside its lock). Returns what `commit_version` does."""
        size = source.stat().st_size
        if size == 0 or size % 512:
            raise BadIdentifier(f"{source} is {size} bytes; a disk image must be a non-zero multiple of 512")
        staged = self.stage_version(image, lambda tmp: clone_or_copy(source, tmp))
        try:
            return self.commit_version(image, staged, sha256_of(staged))
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    def stage_version(self, image: str, fill: Callable[[Path], None]) -> Path:
        """A new file in the store's scratch directory that `fill(path)` writes: a reflink clone where the
        filesystem can (instant, no space), else a copy. Removed again if `fill` fails or writes no disk."""
        staged = self.tmp / f"publish-{image}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            fill(staged)
            size = staged.stat().st_size
            if size == 0 or size % 512:
                raise BadIdentifier(f"the new version is {size} bytes; a disk image must be a non-zero multiple of 512")
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged

    def commit_version(self, image: str, staged: Path, sha256: str, boot: Path | None = None) -> tuple[int, str, bool]:
        """Make a staged file the next version of `image` and its current one: read-only, its SHA-256 next
        to it, and the kernel and initrd read out of it (the files BOOT_FILES names in the directory `boot`,
        if given) beside it, all immutable where the filesystem has the flag. Returns the version, the
        checksum, and whether the files are immutable."""
        directory = self.images / image
        directory.mkdir(mode=0o700, exist_ok=True)
        version = max(self.versions(image), default=0) + 1
        for name in BOOT_FILES:  # left by a commit of this number that failed since start-up: never a version's
            _remove_immutable(self.boot_file(image, version, name))
        os.chmod(staged, 0o444)
        # Marked before it is renamed into place, unmarked once current: start-up discards only a marked
        # version that never became current (a publish that died half-way), never a finished one.
        write_atomically(self._publishing_mark(image, version), b"", 0o600)
        write_atomically(self.checksum_file(image, version), f"{sha256}  v{version}.img\n".encode(), 0o444)
        # Before the image: a version is never seen without the boot files it will have.
        if boot is not None:
            for name in BOOT_FILES:
                os.chmod(boot / name, 0o444)
                rename_durably(boot / name, self.boot_file(image, version, name))
        rename_durably(staged, self.image_file(image, version))
        crash_point("publish-renamed")
        immutable = set_immutable(self.image_file(image, version), True)
        if boot is not None:
            for name in BOOT_FILES:
                set_immutable(self.boot_file(image, version, name), True)  # after the rename: it forbids renames
        write_atomically(directory / "current", f"{version}\n".encode(), 0o644)
        remove_durably(self._publishing_mark(image, version))
        return version, sha256, immutable

    def boot_file(self, image: str, version: int, name: str) -> Path:
        """A version's own kernel or initrd (`name` is one of BOOT_FILES)."""
        return self.images / image / f"v{version}.{name}"

    def has_boot_files(self, image: str, version: int) -> bool:
        return all(self.boot_file(image, version, name).is_file() for name in BOOT_FILES)

    def checksum_file(self, image: str, version: int) -> Path:
        return self.images / image / f"v{version}.sha256"

    def checksum(self, image: str, version: int) -> str | None:
        try:
            return self.checksum_file(image, version).read_text().split()[0]
        except (FileNotFoundError, IndexError):
            return None

    # overlays

    def overlay_dir(self, image: str, label: str) -> Path:
        return self.overlays / image / label

    def read_meta(self, overlay: Path) -> OverlayMeta | None:
        """The overlay's (or backup's) metadata; None when it has none (half-made: not an overlay).
        Raises DamagedMeta when it cannot be read: its disk is kept, never replaced by a fresh one."""
        path = overlay / "meta.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise DamagedMeta(path, str(e)) from None
        try:
            return OverlayMeta.from_json(data)
        except ValueError as e:
            raise DamagedMeta(path, str(e)) from None

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
        rename_durably(work, target)
        return target

    def move_to_backup(self, overlay: Path, image: str, label: str) -> Path:
        stamp = time.strftime(BACKUP_STAMP, time.gmtime())
        parent = self.backups / image / label
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        backup = parent / stamp
        n = 1
        while backup.exists():
            n += 1
            backup = parent / f"{stamp}.{n}"
        rename_durably(overlay, backup)
        return backup

    def list_overlays(self) -> list[tuple[Path, OverlayMeta]]:
        return self._with_meta(self.overlays.glob("*/*"))

    def backup_dir(self, image: str, label: str, name: str) -> Path:
        return self.backups / image / label / name

    def backups_of(self, image: str, label: str) -> list[Path]:
        """One user's backups of an image, oldest first (their names are UTC time stamps)."""
        return sorted(p for p in (self.backups / image / label).glob("*") if self.read_meta(p) is not None)

    def restore_backup(self, backup: Path, image: str, label: str) -> Path:
        """Move a backup back into place as the overlay; the overlay directory must be free."""
        overlay = self.overlay_dir(image, label)
        overlay.parent.mkdir(mode=0o700, exist_ok=True)
        rename_durably(backup, overlay)  # fails if an overlay is there: never overwrites one
        return overlay

    def expired_backups(self, days: int, now: float) -> list[Path]:
        """Backups set aside more than `days` days before `now` (their names are UTC time stamps)."""
        cutoff = time.strftime(BACKUP_STAMP, time.gmtime(now - days * 86400))
        return [path for path, _ in self.list_backups() if path.name[:len(cutoff)] < cutoff]

    def list_backups(self) -> list[tuple[Path, OverlayMeta]]:
        return self._with_meta(self.backups.glob("*/*/*"))

    def _with_meta(self, directories: Iterable[Path]) -> list[tuple[Path, OverlayMeta]]:
        """The directories that hold a readable meta.json (overlays, backups), sorted, each with its
        metadata. Damaged ones are left out here; `damaged` lists them."""
        found = []
        for directory in sorted(directories):
            try:
                meta = self.read_meta(directory)
            except DamagedMeta:
                continue
            if meta is not None:
                found.append((directory, meta))
        return found

    def damaged(self, image: str = "*") -> list[DamagedMeta]:
        """Every overlay and backup (of `image`) whose meta.json cannot be read."""
        found = []
        for directory in sorted([*self.overlays.glob(f"{image}/*"), *self.backups.glob(f"{image}/*/*")]):
            try:
                self.read_meta(directory)
            except DamagedMeta as e:
                found.append(e)
        return found

    def count_overlays(self) -> int:
        """How many overlays there are, from the directory tree alone (cheap: for monitoring)."""
        return sum(1 for _ in self.overlays.glob("*/*"))

    def count_backups(self) -> int:
        return sum(1 for _ in self.backups.glob("*/*/*"))

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def size_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize


def _remove_immutable(path: Path) -> None:
    """Remove a file of a version (absent is fine), clearing its immutable flag first."""
    if path.exists():
        set_immutable(path, False)
    remove_durably(path)


def _listed(versions: list[int]) -> str:
    return ", ".join(f"v{v}" for v in versions)
