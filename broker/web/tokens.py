"""Boot tokens: short-lived signed links in a user's menu, so PAM runs once per boot.

After a successful login the menu's links carry a token that names the user and the image, expires after
`token_ttl` seconds, and is bound (through its MAC, not its text) to the client address that logged in.
Choosing an image sends the token instead of the password again. The key is random per broker process:
a restart only makes the menus on screen expire, which their users see as "log in again".

A link works once (issue 15: a replay within the TTL dropped the live session and handed out new CHAP
credentials). The links of one login's menu share a random nonce, spent at the first use of any of them
(one login boots one disk), before the helper is asked, so two requests at once cannot both pass; a
failed boot does not give it back, since every failure sends the person to the login prompt anyway. Spent
nonces are remembered until their links expire, and no longer: memory follows the links still alive.

A netroot boot script's kernel and initrd come from the broker too, behind a file link: signed with the
same key (and a purpose of its own, so neither kind of link passes for the other), naming the user, the
image and the version the user's disk is pinned to, bound to the client address, valid FILE_LINK_TTL
seconds, and usable any number of times within them: iPXE fetches two files with it and may retry, and
a replay gets no more than the files its owner could fetch (no session, no credentials).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..shared.errors import BrokerError, LoginExpired
from ..shared.identifiers import check_image_name, check_user_name, check_version

MAX_TOKEN_LENGTH = 512
TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
NONCE_BYTES = 12
NONCE = re.compile(r"[A-Za-z0-9_-]{16}")  # NONCE_BYTES in base64url
# Seconds a boot script's file links work: iPXE fetches the kernel and the initrd as soon as it runs the
# script, so a link older than this is one that was copied, not one a workstation still needs.
FILE_LINK_TTL = 120
_FILE_PURPOSE = "file\n"  # a file link's MAC covers this before its payload; a menu link's does not


@dataclass(frozen=True)
class BootGrant:
    """What a verified token allows: this user may boot this image (once: `nonce`, until `expiry`)."""

    user: str
    image: str
    nonce: str
    expiry: int


@dataclass(frozen=True)
class FileGrant:
    """What a verified file link allows: this user's workstation may fetch this version's boot files."""

    user: str
    image: str
    version: int
    expiry: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class TokenSigner:
    def __init__(self, ttl: int, key: bytes | None = None, clock: Callable[[], float] = time.time,
                 nonces: Callable[[], str] = lambda: secrets.token_urlsafe(NONCE_BYTES)) -> None:
        self.ttl = ttl
        self._key = key if key is not None else secrets.token_bytes(32)
        self._clock = clock
        self._nonces = nonces
        self._spent: set[str] = set()
        self._expiries: list[tuple[int, str]] = []  # a heap: the spent nonces by their links' expiry

    def new_nonce(self) -> str:
        """A nonce for one login's links: they are spent together."""
        return self._nonces()

    def _mac(self, payload: str, address: str) -> bytes:
        return hmac.new(self._key, f"{payload}\n{address}".encode(), hashlib.sha256).digest()

    def issue(self, user: str, image: str, address: str, nonce: str | None = None) -> str:
        """A link's token; links issued with one `nonce` are spent together (a fresh one by default)."""
        claims = {"u": user, "i": image, "e": int(self._clock()) + self.ttl, "n": nonce or self.new_nonce()}
        payload = _b64(json.dumps(claims).encode())
        return f"{payload}.{_b64(self._mac(payload, address))}"

    def verify(self, token: str, image: str, address: str) -> BootGrant:
        """The grant a token carries for this image and client address; LoginExpired if it is forged,
        expired, for another image or from another address (the person at the screen logs in again)."""
        try:
            claims = self._claims(token, "", address)
            user, claimed_image, expiry, nonce = claims["u"], claims["i"], claims["e"], claims["n"]
            if not isinstance(nonce, str) or not NONCE.fullmatch(nonce):
                raise ValueError("nonce")
        except (ValueError, KeyError, TypeError) as e:  # binascii.Error is a ValueError
            raise LoginExpired(f"boot link does not verify ({type(e).__name__})") from None
        self._check(claims, image, "boot link")
        return BootGrant(user, claimed_image, nonce, expiry)

    def issue_file_link(self, user: str, image: str, version: int, address: str) -> str:
        """A boot script's link to a version's kernel and initrd, for the workstation at `address`."""
        claims = {"u": user, "i": image, "v": version, "e": int(self._clock()) + FILE_LINK_TTL}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())  # short: iPXE's command line carries it
        return f"{payload}.{_b64(self._mac(_FILE_PURPOSE + payload, address))}"

    def verify_file_link(self, link: str, image: str, address: str) -> FileGrant:
        """The grant a file link carries for this image and client address (any number of times until it
        expires); LoginExpired if it is forged, a menu's link, expired, for another image or address."""
        try:
            claims = self._claims(link, _FILE_PURPOSE, address)
            user, claimed_image, expiry, version = claims["u"], claims["i"], claims["e"], check_version(claims["v"])
        except (ValueError, KeyError, TypeError, BrokerError) as e:
            raise LoginExpired(f"file link does not verify ({type(e).__name__})") from None
        self._check(claims, image, "file link")
        return FileGrant(user, claimed_image, version, expiry)

    def _claims(self, token: str, purpose: str, address: str) -> dict[str, Any]:
        """The claims of a token whose MAC (for `purpose` and `address`) verifies; ValueError otherwise."""
        payload, _, mac = token.partition(".")
        # The MAC is compared as text: base64 has spare bits in its last character, so comparing the
        # decoded bytes accepted other spellings of the same MAC (found by tests/unit/test_fuzz.py).
        if len(token) > MAX_TOKEN_LENGTH or not TOKEN.fullmatch(token) or not hmac.compare_digest(mac, _b64(self._mac(purpose + payload, address))):
            raise ValueError("signature")
        claims = json.loads(_unb64(payload))
        if not isinstance(claims, dict):
            raise TypeError("claims")
        check_user_name(claims["u"])
        check_image_name(claims["i"])
        return claims

    def _check(self, claims: dict[str, Any], image: str, what: str) -> None:
        if claims["i"] != image:
            raise LoginExpired(f"{what} is for another image")
        if not isinstance(claims["e"], int) or self._clock() > claims["e"]:
            raise LoginExpired(f"{what} of {claims['u']} expired")

    def redeem(self, token: str, image: str, address: str) -> BootGrant:
        """`verify`, and spend the link with the rest of its menu; LoginExpired if it was already used."""
        grant = self.verify(token, image, address)
        now = self._clock()
        while self._expiries and self._expiries[0][0] < now:
            self._spent.discard(heapq.heappop(self._expiries)[1])
        if grant.nonce in self._spent:
            raise LoginExpired(f"boot link of {grant.user} already used")
        self._spent.add(grant.nonce)
        heapq.heappush(self._expiries, (grant.expiry, grant.nonce))
        return grant

    def spent(self) -> int:
        """How many spent nonces are remembered."""
        return len(self._spent)
