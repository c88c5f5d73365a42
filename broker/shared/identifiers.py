"""Validated identifiers: image names, user names, and the names derived from them.

Everything that reaches a path, an IQN, a device-mapper name or a template is derived here from a name
that passed validation, so no other module ever needs to sanitise.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass

from .errors import BadIdentifier

IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Site user names (unix, AD, LDAP): letters, digits and . _ @ -, not starting with a separator.
USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}")
VERSION = re.compile(r"[1-9][0-9]{0,8}")
BACKUP_NAME = re.compile(r"[0-9]{8}T[0-9]{6}(\.[1-9][0-9]{0,5})?")  # the store's dated backup directories
IQN_DATE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
DOMAIN = re.compile(r"(?=.{1,200}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")
LABEL_SAFE = re.compile(r"[a-z0-9][a-z0-9.-]*")
# A label that looks like the output of the hashed mapping is hashed too, so the two never collide.
LOOKS_HASHED = re.compile(r".*--[0-9a-f]{10}")

# What must never reach an iPXE script inside a value: control characters and newlines (a new command),
# `$`, `{`, `}` (setting expansion), quotes and backslashes (tokenising), `||` and `&&` (control flow).
SCRIPT_UNSAFE = re.compile(r"[\x00-\x1f\x7f$\\{}\"'`]|\|\||&&")

# The longest label: a 64-character name that needed the hash suffix (see user_label).
MAX_LABEL_LENGTH = 64 + len("--") + 10
MAX_IQN_LENGTH = 223  # LIO's limit (ISCSI_IQN_LEN, 224 with the terminating NUL)
MAX_DM_NAME_LENGTH = 127  # device-mapper's (DM_NAME_LEN, 128 with the NUL): dm-snapshot devices are named as storage objects
STORAGE_OBJECT_PREFIX = "bb."

CHAP_ALPHABET = string.ascii_letters + string.digits
CHAP_SECRET_LENGTH = 20  # LIO and iPXE accept 12..255; DESIGN.md asks for 16..24
_SHOWN_MAX = 40


def _shown(value: str) -> str:
    """A value fit to quote in an error message: printable, short."""
    text = value.encode("unicode_escape").decode("ascii")
    return repr(text if len(text) <= _SHOWN_MAX else text[:_SHOWN_MAX] + "...")


MAX_LOGGED = 200  # characters of one request value in a log line


def loggable(value: object, limit: int = MAX_LOGGED) -> str:
    """A value from a request, fit for a log line: at most `limit` characters (then `...`), everything but
    printable ASCII escaped (no newline, carriage return or terminal escape: a request cannot write a log
    line of its own), backslashes and double quotes too (an escape in the log is always ours)."""
    text = str(value)
    escaped = text[:limit].encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return escaped + ("..." if len(text) > limit else "")


def check_image_name(value: object) -> str:
    if not isinstance(value, str) or not IMAGE_NAME.fullmatch(value):
        shown = _shown(value) if isinstance(value, str) else type(value).__name__
        raise BadIdentifier(
            f"image name {shown} is not valid: use 1-63 of a-z, 0-9 and '-', starting with a letter or digit"
        )
    return value


def check_user_name(value: object) -> str:
    if not isinstance(value, str) or not USER_NAME.fullmatch(value):
        shown = _shown(value) if isinstance(value, str) else type(value).__name__
        raise BadIdentifier(
            f"user name {shown} is not valid: use 1-64 of A-Z, a-z, 0-9 and . _ @ -, "
            "not starting with . @ or -"
        )
    return value


def script_safe(value: str) -> bool:
    """True when the text can go into an iPXE script as a value without changing its meaning."""
    return SCRIPT_UNSAFE.search(value) is None


def check_version(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not VERSION.fullmatch(str(value)):
        raise BadIdentifier(f"image version {value!r} is not valid: use a whole number from 1")
    return value


# A version's own kernel and initrd (netroot), kept beside it in the store and served by the broker.
BOOT_FILES = ("vmlinuz", "initrd.img")


def check_boot_file(value: object) -> str:
    if not isinstance(value, str) or value not in BOOT_FILES:
        raise BadIdentifier(f"a boot file is one of {', '.join(BOOT_FILES)}")
    return value


def check_backup_name(value: object) -> str:
    if not isinstance(value, str) or not BACKUP_NAME.fullmatch(value):
        raise BadIdentifier(f"backup {str(value)[:40]!r} is not valid: a name like 20261123T083000 "
                            "(see `bootbroker backups`)")
    return value


def user_label(user: str) -> str:
    """Map a user name to `[a-z0-9.-]`, fit for an IQN, without collisions.

    A name that is already a label stays as it is; any other gets a hash of the original name appended,
    and so does a name that merely looks like such a result.
    """
    check_user_name(user)
    lowered = re.sub(r"[^a-z0-9.-]", "-", user.lower())
    if lowered == user and LABEL_SAFE.fullmatch(user) and not LOOKS_HASHED.fullmatch(user):
        return user
    digest = hashlib.sha256(user.encode()).hexdigest()[:10]
    return f"{lowered.strip('.-') or 'u'}--{digest}"


@dataclass(frozen=True)
class IqnScheme:
    """How this site names its targets and initiators: `iqn.<yyyy-mm>.<reversed domain>:...`."""

    date: str
    domain: str

    @property
    def prefix(self) -> str:
        return f"iqn.{self.date}.{'.'.join(reversed(self.domain.split('.')))}"

    def target(self, image: str, label: str) -> str:
        return f"{self.prefix}:{image}.{label}"

    def new_initiator(self, image: str, label: str) -> str:
        """A fresh initiator name per boot session, so the previous session's ACL can never match it."""
        return f"{self.prefix}:client.{image}.{label}.{secrets.token_hex(4)}"

    def longest_name(self, image: str) -> int:
        """The length of the longest IQN this scheme makes for `image` (an initiator of the longest label)."""
        return len(self.new_initiator(image, "x" * MAX_LABEL_LENGTH))


def storage_object_name(image: str, label: str) -> str:
    """The overlay's LIO storage object, and its device-mapper device with the dm-snapshot backend."""
    return f"{STORAGE_OBJECT_PREFIX}{image}.{label}"


def new_chap_secret() -> str:
    return "".join(secrets.choice(CHAP_ALPHABET) for _ in range(CHAP_SECRET_LENGTH))
