"""Who may boot which image: users and groups from the configuration, group membership through NSS."""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable

from .config import EVERYONE, ImageConfig


class NssDirectory:
    """Group membership as the system resolves it (files, sssd, ldap, ...). Blocking: call from a thread."""

    def groups_of(self, user: str) -> frozenset[str]:
        try:
            primary = pwd.getpwnam(user).pw_gid
        except KeyError:
            return frozenset()
        names = set()
        for gid in os.getgrouplist(user, primary):
            try:
                names.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                continue
        return frozenset(names)

    def canonical(self, user: str) -> str | None:
        """The account's own name for a name PAM accepted (sssd may match `Alice` to `alice`), None when
        NSS knows no such account."""
        try:
            return pwd.getpwnam(user).pw_name
        except KeyError:
            return None


def _named(image: ImageConfig, user: str) -> bool:
    return EVERYONE in image.users or user in image.users


def needs_groups(images: Iterable[ImageConfig], user: str) -> bool:
    """Whether the user's groups can change what these images allow: only then is NSS asked (it may be a
    round trip to a directory server, on every login and boot of a storm)."""
    return any(image.groups and not _named(image, user) for image in images)


def may_boot(image: ImageConfig, user: str, groups: frozenset[str]) -> bool:
    return _named(image, user) or not image.groups.isdisjoint(groups)


def permitted_images(images: dict[str, ImageConfig], user: str, groups: frozenset[str]) -> list[ImageConfig]:
    """The images this user may boot, in the configuration's order."""
    return [image for image in images.values() if may_boot(image, user, groups)]
