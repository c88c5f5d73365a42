"""Image versions: publishing (from a file, or from a user's overlay), making a version current again,
retiring versions, the list of images, and a version's own kernel and initrd for netroot."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from ..images.bootfiles import BootFiles, NotFound, extract
from ..shared.config import BootMethod
from ..shared.errors import BackendFailure, BadIdentifier, Conflict, NoSuchOverlay, UnknownImage
from ..shared.identifiers import check_boot_file, check_image_name, check_version
from ..shared.protocol import OpenFile
from .context import Part, store_error
from .copies import clone_or_copy_from, sha256_of
from .faults import crash_point

log = logging.getLogger(__name__)


class ImageVersions(Part):
    def publish(self, image: object, source: object) -> dict[str, Any]:
        """Store a file as the next version of an image. Touches: images/<image>/ only. Root only."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration; add [images.{image}] first")
        if not isinstance(source, str) or not source.startswith("/") or "\0" in source:
            raise BadIdentifier("source must be an absolute path")
        # Opened once, without following a link, and checked by its descriptor: the file copied is the one
        # checked, whatever the name points to by the time the copy starts.
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BadIdentifier(f"{source} is a symbolic link: give the image file itself") from None
            raise BadIdentifier(f"cannot open {source}: {e.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadIdentifier(f"{source} is not a regular file")
            # The copy and the checksum, which take long for a big image, happen before taking the lock:
            # logins go on meanwhile. Only numbering and renaming the version is done under it.
            try:
                staged = self.store.stage_version(image, lambda tmp: clone_or_copy_from(fd, tmp))
            except OSError as e:
                raise store_error(e, f"copy {source} into the store") from None
        finally:
            os.close(fd)
        crash_point("publish-staged")
        version, sha256, immutable, boot = self._commit(image, staged)
        log.info("published %s v%d from %s (sha256 %s)%s%s", image, version, source, sha256, _kept(boot),
                 "" if immutable else "; the store's filesystem has no immutable flag")
        return {"image": image, "version": version, "sha256": sha256, "immutable": immutable, **_boot_result(boot)}

    def publish_overlay(self, image: object, from_image: object, user: object) -> dict[str, Any]:
        """Publish a user's overlay of `from_image` (their golden version with their changes) as the next
        version of `image`: a teacher prepares a disk, the class gets it. Refused (Conflict) while that
        user is logged in on it; a session that is not logged in is ended first (its ACL deleted), so no
        workstation can reconnect and write during the copy, and the user's logins, resets and restores of
        that overlay are refused until it is done. The copy (a dm-snapshot is read whole) runs without the
        lock: everyone else logs in meanwhile. Touches: the user's session, images/<image>/ (a dm-snapshot
        is attached for the copy if it was not). Root only."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration; add [images.{image}] first")
        names = self.context.names(from_image, user)
        with self.context.lock:
            self.context.check_not_publishing(names)
            overlay = self.store.overlay_dir(names.image, names.label)
            meta = self.store.read_meta(overlay)
            if meta is None:
                raise NoSuchOverlay(f"{names.user} has no overlay of {names.image}")
            session = self.book.get(names.image, names.user)
            if session is not None:
                if self.lio.logged_in(names.target, session.initiator):
                    raise Conflict(f"{names.user} is logged in on {names.image}: publish when that workstation is off, "
                                   "or end the session first")
                self.context.end(names, session)
                log.info("ended the session of %s on %s to publish the overlay", names.user, names.image)
            self.context.publishing.add((names.image, names.user))
        try:
            golden = self.store.image_file(names.image, meta.version)
            staged = self.store.stage_version(
                image, lambda destination: self.backend.materialize(golden, overlay, names.storage_object, destination)
            )
        finally:
            with self.context.lock:
                self.context.publishing.discard((names.image, names.user))
        version, sha256, immutable, boot = self._commit(image, staged)
        log.info("published %s v%d from the overlay of %s on %s v%d (sha256 %s)%s", image, version, names.user,
                 names.image, meta.version, sha256, _kept(boot))
        return {"image": image, "version": version, "sha256": sha256, "immutable": immutable, **_boot_result(boot)}

    def _commit(self, image: str, staged: Path) -> tuple[int, str, bool, BootFiles | None]:
        """Checksum a staged version and read its kernel and initrd out of it without the lock (both read
        the file), then number it and make it current under the lock, with its boot files beside it. The
        staged file and what was read out of it are removed if anything fails."""
        work = staged.with_name(f"{staged.name}.boot")  # tmp/publish-*: start-up removes it after a crash
        try:
            sha256 = sha256_of(staged)
            boot = self._boot_files(image, staged, work)
            with self.context.lock:
                version, sha256, immutable = self.store.commit_version(
                    image, staged, sha256, boot.directory if boot is not None else None)
            return version, sha256, immutable, boot
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _boot_files(self, image: str, staged: Path, work: Path) -> BootFiles | None:
        """The kernel and initrd of a staged version, read out of it into `work`; None if it has none.

        Looked for in every image, not only those that boot by netroot today: `boot` is a line of the
        configuration that an admin may change at any time, while a version never changes, and the users
        pinned to it cannot all be moved (rebase sets their disks aside). Reading them costs a few seconds
        and two files' room (tens of MiB) beside a disk of GiB. Required (the publish refused) only for a
        netroot image without kernel and initrd URLs: it would publish a version nobody can boot."""
        config = self.config.images[image]
        required = config.boot is BootMethod.NETROOT and not config.kernel
        work.mkdir(mode=0o700)
        try:
            return extract(staged, work)
        except NotFound as e:
            if required:
                raise BadIdentifier(
                    f"{image} boots by netroot with the kernel and initrd of each version ([images.{image}] sets no "
                    f"kernel and initrd URLs), and this disk has none: {e}. Install a kernel and its initramfs in the "
                    "image (on an ext2/3/4 root or /boot), or set kernel and initrd URLs; nothing was published"
                ) from None
            log.info("%s: the new version has no kernel and initrd of its own (it cannot boot by netroot): %s", image, e)
        except BackendFailure as e:
            if required:
                raise BackendFailure(f"cannot read the kernel and initrd out of the new version of {image}: "
                                     f"{e.message}; nothing was published") from None
            log.warning("%s: the new version's kernel and initrd were not looked for (it cannot boot by netroot): %s",
                        image, e.message)
        return None

    def boot_file(self, image: object, version: object, name: object) -> OpenFile:
        """An open, read-only descriptor of a published version's own kernel or initrd (`name`: vmlinuz or
        initrd.img), for the broker to send to a netroot workstation: it cannot open anything in the
        store itself. Reads only; takes no lock (a retire meanwhile leaves the open file readable). Raises
        UnknownImage if that version or its file is not there."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration")
        version = check_version(version)
        name = check_boot_file(name)
        try:
            fd = os.open(self.store.boot_file(image, version, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnknownImage(f"{image} v{version} has no {name} of its own (retired, or published without one)") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UnknownImage(f"{image} v{version}'s {name} is not a regular file")
        return OpenFile(fd, st.st_size)

    def published(self) -> list[str]:
        """The configured images that have a current version: what a menu may offer. Reads only, no lock."""
        return [name for name in self.config.images if self.store.has_current(name)]

    def images(self) -> list[dict[str, Any]]:
        """Every configured image: its versions, which one is current, how many overlays and backups were
        made from each, file size and bytes used. Reads only; takes no lock."""
        pins = self.store.pins()
        rows = []
        for name, image in self.config.images.items():
            try:
                current: int | None = self.store.current_version(name)
            except UnknownImage:
                current = None
            versions = []
            for version in self.store.versions(name):
                try:
                    st = self.store.image_file(name, version).stat()
                except FileNotFoundError:  # retired meanwhile
                    continue
                overlays, backups = pins.get((name, version), (0, 0))
                versions.append({
                    "version": version, "current": version == current, "published": st.st_mtime,
                    "sha256": self.store.checksum(name, version),
                    "boot_files": self.store.has_boot_files(name, version),
                    "size": st.st_size, "bytes_used": st.st_blocks * 512, "overlays": overlays, "backups": backups,
                })
            rows.append({"image": name, "description": image.description, "current": current, "versions": versions})
        return rows

    def retire(self, image: object, version: object) -> dict[str, Any]:
        """Delete one version of an image (`version`), or all of them (None). Refuses the current version
        and any version an overlay or a backup was made from (Conflict, naming the users). Touches:
        images/<image>/ only. Root only."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration")
        if version is not None:
            version = check_version(version)
        with self.context.lock:
            retired = self.store.retire(image, version)
        log.info("retired %s %s", image, ", ".join(f"v{v}" for v in retired))
        return {"image": image, "retired": retired}

    def set_current(self, image: object, version: object) -> dict[str, Any]:
        """Make a published version of an image current again (new overlays are made from it; existing ones
        stay on theirs): an admin's way back from a bad publish. Touches: images/<image>/current only.
        Idempotent. Root only."""
        image = check_image_name(image)
        if image not in self.config.images:
            raise UnknownImage(f"there is no image {image!r} in the configuration")
        version = check_version(version)
        with self.context.lock:
            previous = self.store.set_current(image, version)
        log.info("%s: v%d is current (was v%d)", image, version, previous)
        return {"image": image, "current": version, "previous": previous}


def _kept(boot: BootFiles | None) -> str:
    return f"; its kernel {boot.kernel} and initrd {boot.initrd} kept beside it" if boot is not None else ""


def _boot_result(boot: BootFiles | None) -> dict[str, str | None]:
    """Where the version's kernel and initrd were in it (None: it has none of its own)."""
    return {"kernel": boot.kernel if boot else None, "initrd": boot.initrd if boot else None}
