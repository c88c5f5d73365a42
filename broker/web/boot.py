"""The boot use case, in one place: request -> authenticate -> menu -> ensure session -> render.

The web layer (`app.py`) parses HTTP and maps errors; this module decides. Its ports are small
interfaces so the web tests can use fakes: an `Authenticator` (PAM in production, asked through the
failed-login limits of `gate.LoginGate`), a `SessionHelper` (the privileged helper, through its client), a
`Directory` (accounts and group membership through NSS).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..shared.access import needs_groups, permitted_images
from ..shared.config import BootMethod, BrokerConfig, Config, ImageConfig, Portal
from ..shared.errors import (
    BackendFailure, BrokerError, Busy, ErrorCode, InternalError, LoginFailed, NotPermitted, TooManyAttempts,
    UnknownImage,
)
from ..shared.identifiers import BOOT_FILES, CHAP_ALPHABET, IMAGE_NAME, USER_NAME, loggable, script_safe
from ..shared.protocol import OpenFile
from .gate import Authenticator, LoginGate
from .limiter import LoginLimiter
from .metrics import Metrics
from .scripts import ENTRY, MENU, MESSAGE, NETROOT, SANBOOT, ScriptRenderer
from .tokens import TokenSigner

log = logging.getLogger(__name__)

IQN = re.compile(r"iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9.-]+:[a-z0-9.:-]+")
CHAP_SECRET = re.compile(f"[{CHAP_ALPHABET}]{{12,64}}")
PAUSE_MS = 8000  # how long a message stays on screen before the login prompt comes back
NOTE_TTL = 120.0  # seconds a failure's message waits for the screen to ask for it
MAX_NOTES = 4096
PUBLISHED_TTL = 5.0  # seconds the broker trusts the helper's list of published images (a boot storm asks once)


class SessionHelper(Protocol):
    async def ensure_session(self, image: str, user: str) -> dict[str, Any]: ...
    async def boot_file(self, image: str, version: int, name: str) -> OpenFile: ...
    async def published(self) -> list[str]: ...
    async def health(self) -> dict[str, Any]: ...


class Directory(Protocol):
    """Accounts as the system resolves them (NSS). Blocking: called from a thread."""

    def groups_of(self, user: str) -> frozenset[str]: ...

    def canonical(self, user: str) -> str | None:
        """The account's own name for a name PAM accepted (NSS may match `Alice` to `alice`); None if
        there is no such account."""
        ...


@dataclass(frozen=True)
class Grant:
    """A boot session's credentials as the helper gave them, checked before they reach a script."""

    target_iqn: str
    lun: int
    portals: tuple[Portal, ...]
    initiator_iqn: str
    chap_user: str
    chap_secret: str
    # The version the user's disk is pinned to, and whether it has its own kernel and initrd (netroot); a
    # helper older than these fields answers neither: no boot files.
    version: int | None = None
    boot_files: bool = False

    @classmethod
    def from_helper(cls, data: dict[str, Any]) -> Grant:
        try:
            portals = [Portal.parse(str(text)) for text in data["portals"]]
            grant = cls(
                data["target_iqn"], data["lun"], tuple(portals), data["initiator_iqn"], data["chap_user"],
                data["chap_secret"], data.get("version"), data.get("boot_files", False) is True,
            )
            if not (IQN.fullmatch(grant.target_iqn) and IQN.fullmatch(grant.initiator_iqn) and portals
                    and isinstance(grant.lun, int) and 0 <= grant.lun < 16384
                    and re.fullmatch(r"[a-z0-9.-]{1,128}", grant.chap_user)
                    and CHAP_SECRET.fullmatch(grant.chap_secret)
                    and (grant.version is None or type(grant.version) is int and grant.version > 0)):
                raise ValueError("field out of range")
        except (KeyError, TypeError, ValueError) as e:
            raise InternalError(f"the helper's session answer is malformed ({e})") from None
        return grant

    def san_uris(self) -> list[str]:
        """iPXE's `iscsi:<server>:<protocol>:<port>:<lun>:<target>`, one per portal (multipath)."""
        return [
            f"iscsi:{f'[{p.host}]' if ':' in p.host else p.host}::{p.port}:{self.lun}:{self.target_iqn}"
            for p in self.portals
        ]

    def netroot(self) -> str:
        """dracut's `iscsi:<user>:<secret>@<server>:<protocol>:<port>:<lun>:<target>` (first portal)."""
        p = self.portals[0]
        host = f"[{p.host}]" if ":" in p.host else p.host
        return f"iscsi:{self.chap_user}:{self.chap_secret}@{host}::{p.port}:{self.lun}:{self.target_iqn}"


# What the person at the screen reads, per error code: short, no detail an attacker could use.
SCREEN_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.LOGIN_FAILED: "Wrong user name or password.",
    ErrorCode.TOO_MANY_ATTEMPTS: "Too many failed logins. Wait a few minutes, then try again.",
    ErrorCode.LOGIN_EXPIRED: "Your login has expired. Please log in again.",
    ErrorCode.NOT_PERMITTED: "You may not boot any disk here. Ask the helpdesk.",
    ErrorCode.UNKNOWN_IMAGE: "That disk does not exist (any more). Please log in again.",
    ErrorCode.HELPER_UNAVAILABLE: "The boot service is not available right now. Try again in a minute.",
    ErrorCode.BUSY: "The boot service is busy right now. Try again in a minute.",
    ErrorCode.STORE_FULL: "There is no room for your disk right now. Ask the helpdesk.",
}
DEFAULT_SCREEN_MESSAGE = "Your disk could not be prepared. Try again, or ask the helpdesk."


def screen_message(error: BrokerError) -> str:
    # A bad request's own message says what to change, and is built without any value from the request.
    if error.code is ErrorCode.BAD_REQUEST and script_safe(error.message) and len(error.message) < 200:
        return f"Refused: {error.message}."
    return SCREEN_MESSAGES.get(error.code, DEFAULT_SCREEN_MESSAGE)


class FailureNotes:
    """The last failure's message per client address, for the entry script to show (iPXE cannot show the
    body of an error answer). Bounded in size and time; holds no secret."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._notes: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def put(self, address: str, message: str) -> None:
        self._notes.pop(address, None)
        self._notes[address] = (self._clock() + NOTE_TTL, message)
        while len(self._notes) > MAX_NOTES:
            self._notes.popitem(last=False)

    def take(self, address: str) -> str | None:
        expiry, message = self._notes.pop(address, (0.0, ""))
        return message if expiry >= self._clock() else None


class BootFlow:
    def __init__(
        self,
        config: Config,
        broker: BrokerConfig,
        authenticator: Authenticator,
        helper: SessionHelper,
        directory: Directory,
        renderer: ScriptRenderer,
        signer: TokenSigner,
        limiter: LoginLimiter,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.broker = broker
        self.helper = helper
        self.directory = directory
        self.renderer = renderer
        self.signer = signer
        self.notes = FailureNotes(clock)
        self.metrics = metrics or Metrics()
        self.gate = LoginGate(authenticator, limiter, self.metrics)
        self._clock = clock
        self._published: tuple[float, frozenset[str]] = (float("-inf"), frozenset())

    @property
    def limiter(self) -> LoginLimiter:
        """The failed-login limits the gate keeps."""
        return self.gate.limiter

    # URLs the scripts use. The login URL carries iPXE's own expansion of the typed credentials.

    def url(self, path: str) -> str:
        return f"{self.broker.url}{path}"

    def login_url(self) -> str:
        scheme = self.broker.url.split("://", 1)[0]
        return f"{scheme}://${{username:uristring}}:${{password:uristring}}@{self.broker.host}/login.ipxe"

    def _netroot_files(self, image: ImageConfig, user: str, grant: Grant, address: str) -> tuple[str, str]:
        """The kernel and initrd URLs of a netroot script: the site's, if it set them; else this broker's
        file links to the kernel and initrd of the version the user's disk is pinned to."""
        if image.kernel:
            return image.kernel, image.initrd
        if grant.version is None or not grant.boot_files:
            raise BackendFailure(
                f"{image.name} v{grant.version} has no kernel and initrd of its own, and [images.{image.name}] sets "
                "no kernel and initrd URLs: publish a version that has them (images publish reads them out of the "
                "disk), or rebase the user onto one")
        link = self.signer.issue_file_link(user, image.name, grant.version, address)
        kernel, initrd = BOOT_FILES
        return self.url(f"/boot/{image.name}/{link}/{kernel}"), self.url(f"/boot/{image.name}/{link}/{initrd}")

    async def boot_file(self, image_name: str, link: str, name: str, address: str) -> OpenFile:
        """A version's kernel or initrd, open, for a netroot script's file link (checked: signed, bound to
        this address and image, unexpired; usable more than once). The caller closes it."""
        if not IMAGE_NAME.fullmatch(image_name) or image_name not in self.config.images or name not in BOOT_FILES:
            raise UnknownImage(f"no boot file {loggable(image_name, 64)}/{loggable(name, 16)}")
        try:
            grant = self.signer.verify_file_link(link, image_name, address)
        except BrokerError:
            self.metrics.boot_file(name, "refused")
            raise
        try:
            opened = await self.helper.boot_file(image_name, grant.version, name)
        except BrokerError:
            self.metrics.boot_file(name, "failed")
            raise
        self.metrics.boot_file(name, "ok")
        log.info("%s of %s v%d for %s at %s (%d bytes)", name, image_name, grant.version, grant.user, address, opened.size)
        return opened

    # the conversation

    def entry(self, after_failure: bool = False) -> str:
        """The first script: log in, or boot the local disk after a timeout (or, after a failure, log in)."""
        return self.renderer.render(ENTRY, {
            "title": "bootbroker: log in to boot your own disk",
            "site": self.broker.names[0],
            "default": "login" if after_failure else "local",
            "timeout_ms": self.broker.menu_timeout * 1000,
            "message_url": self.url("/message.ipxe"),
        }, expansions={"login_url": self.login_url()})

    def message(self, text: str) -> str:
        """A script that shows `text` and goes back to the login prompt."""
        return self.renderer.render(MESSAGE, {
            "message": text, "pause_ms": PAUSE_MS, "retry_url": self.url("/boot.ipxe?then=login"),
        })

    def failure(self, error: BrokerError, address: str) -> str:
        """Remember the screen message of a failed request for `/message.ipxe`, and return its script."""
        text = screen_message(error)
        if isinstance(error, TooManyAttempts):
            text = f"Too many failed logins. Try again in {max(1, round(error.retry_after / 60))} minute(s)."
        self.notes.put(address, text)
        return self.message(text)

    def pending_message(self, address: str) -> str:
        return self.message(self.notes.take(address) or "That did not work. Please log in again.")

    async def login(self, user: str, password: str, address: str) -> str:
        """Authenticate once; answer the menu of the images this user may boot, with signed links.

        A failure of any kind (unknown user, wrong password, too many attempts) is answered no sooner
        than `failure_delay` after the request arrived, so the answer's timing tells nothing; so is a busy
        PAM, which is no failure, so that a flood's refused guesses come back no faster than its wrong
        ones. The menu, its links and the helper get the account's own name (NSS's), not the spelling typed."""
        started = self._clock()
        try:
            await self.gate.authenticate(user, password, address)
        except (LoginFailed, TooManyAttempts, Busy):
            await asyncio.sleep(max(0.0, started + self.broker.limits.failure_delay - self._clock()))
            raise
        typed, user = user, await self._canonical(user)
        groups = await self._groups_of(user, self.config.images.values())
        published = await self._published_images()
        images = [image for image in permitted_images(self.config.images, user, groups) if image.name in published]
        if not images:
            raise NotPermitted(f"{user} logged in but may boot no image")
        log.info("login of %s%s from %s: %d image(s)", user, "" if typed == user else f" (typed {typed})",
                 address, len(images))
        nonce = self.signer.new_nonce()  # one per menu: its links are spent together
        return self.renderer.render(MENU, {
            "user": user,
            "ttl": self.signer.ttl,
            "timeout_ms": self.broker.menu_timeout * 1000,
            "items": [
                {
                    "key": f"image-{image.name}",
                    "description": image.description,
                    "url": self.url(
                        f"/boot/{image.name}.ipxe?token={self.signer.issue(user, image.name, address, nonce)}"),
                }
                for image in images
            ],
            "message_url": self.url("/message.ipxe"),
            "entry_url": self.url("/boot.ipxe"),
        })

    async def _canonical(self, user: str) -> str:
        """The account's own name (in a thread: NSS blocks), checked like any name that reaches a script."""
        name = await asyncio.to_thread(self.directory.canonical, user)
        if name is None or not USER_NAME.fullmatch(name):
            raise NotPermitted(f"PAM accepted {user} but NSS gives no usable account name for it ({name!r})")
        return name

    async def _groups_of(self, user: str, images: Iterable[ImageConfig]) -> frozenset[str]:
        """The user's groups, looked up (in a thread: NSS blocks) only when these images' decision needs them."""
        if not needs_groups(images, user):
            return frozenset()
        return await asyncio.to_thread(self.directory.groups_of, user)

    async def _published_images(self) -> frozenset[str]:
        """The images with a published version, from the helper, cached for PUBLISHED_TTL seconds."""
        expiry, names = self._published
        if self._clock() >= expiry:
            names = frozenset(await self.helper.published())
            self._published = (self._clock() + PUBLISHED_TTL, names)
        return names

    async def boot(self, image_name: str, token: str, address: str) -> str:
        """Verify the link, have the helper start a boot session, and answer the image's boot script."""
        if not IMAGE_NAME.fullmatch(image_name) or image_name not in self.config.images:
            raise UnknownImage(f"no image {loggable(image_name, 64)}")
        image = self.config.images[image_name]
        grant = self.signer.redeem(token, image_name, address)  # before any await: a replay cannot race it
        groups = await self._groups_of(grant.user, [image])
        if not permitted_images({image.name: image}, grant.user, groups):
            raise NotPermitted(f"{grant.user} may not boot {image.name}")
        started = self._clock()
        try:
            session = Grant.from_helper(await self.helper.ensure_session(image.name, grant.user))
        except BrokerError:
            self.metrics.session_failed()
            raise
        self.metrics.session_started(self._clock() - started)
        log.info("boot of %s by %s from %s: initiator %s", image.name, grant.user, address, session.initiator_iqn)
        return self._boot_script(image, grant.user, session, address)

    def _boot_script(self, image: ImageConfig, user: str, grant: Grant, address: str) -> str:
        values: dict[str, object] = {
            "user": user,
            "image": image.name,
            "description": image.description,
            "chap_user": grant.chap_user,
            "chap_secret": grant.chap_secret,
            "initiator_iqn": grant.initiator_iqn,
            "pause_ms": PAUSE_MS,
            "retry_url": self.url("/boot.ipxe?then=login"),
        }
        if image.boot is BootMethod.NETROOT:
            kernel, initrd = self._netroot_files(image, user, grant, address)
            values.update(kernel=kernel, initrd=initrd, cmdline=image.cmdline, netroot=grant.netroot())
            return self.renderer.render(NETROOT, values)
        values["san_uris"] = grant.san_uris()
        return self.renderer.render(SANBOOT, values)
