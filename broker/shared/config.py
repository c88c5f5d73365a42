"""The configuration: one TOML file, loaded once into a frozen, typed tree and validated as a whole.

Every problem is collected and reported together, each saying which key and what to write instead, so an
admin fixes the file in one pass.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ConfigError
from .identifiers import (
    DOMAIN, IMAGE_NAME, IQN_DATE, MAX_DM_NAME_LENGTH, MAX_IQN_LENGTH, MAX_LABEL_LENGTH, USER_NAME, IqnScheme,
    script_safe, storage_object_name,
)

DEFAULT_PATH = Path("/etc/bootbroker/bootbroker.toml")


class BackendKind(StrEnum):
    REFLINK = "reflink"
    DM_SNAPSHOT = "dm-snapshot"
    DM_THIN = "dm-thin"


KEY_TYPES = ("rsa", "ecdsa")  # [broker] key_type: a generated certificate's key, RSA-2048 or ECDSA P-256


@dataclass(frozen=True)
class Portal:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified

    @classmethod
    def parse(cls, text: str) -> Portal:
        """ADDRESS:PORT, an IPv6 address in brackets; ValueError if it is not one."""
        host, sep, port_text = text.rpartition(":")
        portal = cls(str(ipaddress.ip_address(host.strip("[]"))), int(port_text))
        if not sep or not 0 < portal.port < 65536:
            raise ValueError(f"{text!r} is not ADDRESS:PORT")
        return portal


@dataclass(frozen=True)
class StoreConfig:
    path: Path
    backend: BackendKind
    # dm-snapshot only: size of each overlay's copy-on-write file, as a percentage of the image size.
    cow_percent: int
    backup_days: int = 30  # reset and restore keep the overlays they set aside this long
    min_free_percent: int = 5  # no new overlays when the store's free space falls below this
    fill_warn_percent: int = 80  # dm-snapshot, dm-thin: warn when a COW file (the thin pool) is this full
    pool_percent: int = 75  # dm-thin only: the thin pool's share of the store's filesystem, set aside when made

    @property
    def sessions_dir(self) -> Path:
        return self.path / "sessions"


@dataclass(frozen=True)
class HelperConfig:
    socket: Path
    broker_group: str
    helpdesk_group: str


@dataclass(frozen=True)
class IscsiConfig:
    iqn: IqnScheme
    portals: tuple[Portal, ...]  # where LIO listens
    advertise: tuple[Portal, ...]  # what boot scripts tell clients to connect to


class BootMethod(StrEnum):
    SANBOOT = "sanboot"  # iPXE boots the disk itself (any OS that reads the iBFT)
    NETROOT = "netroot"  # iPXE loads a kernel and initrd that mount the disk (dracut's netroot=iscsi:...)


EVERYONE = "*"


@dataclass(frozen=True)
class ImageConfig:
    name: str
    description: str
    users: frozenset[str]  # who may boot it, by name; "*" is everyone who can log in
    groups: frozenset[str]  # ... or by group membership (resolved through NSS)
    boot: BootMethod
    # netroot only: URLs iPXE fetches ("": the kernel and initrd of each published version, which the
    # broker serves), and extra kernel arguments
    kernel: str
    initrd: str
    cmdline: str


@dataclass(frozen=True)
class LoginLimits:
    """Failed-login rate limiting: after `user_failures` failures of one user name, or `address_failures`
    from one client address, within `window` seconds, further attempts are refused without asking PAM.
    Every failed attempt is answered no sooner than `failure_delay` seconds after it arrived (a tarpit
    that also makes an unknown user and a wrong password take the same time)."""

    user_failures: int
    address_failures: int
    window: float
    failure_delay: float


@dataclass(frozen=True)
class BrokerConfig:
    url: str  # how workstations reach the broker, e.g. https://boot.example.org
    listen: tuple[Portal, ...]  # where the broker listens
    names: tuple[str, ...]  # the certificate's names: the URL's host first, then the extra names
    certificate: Path
    key: Path
    key_type: str  # the key a generated certificate gets: "rsa" (every iPXE) or "ecdsa" (iPXE 2.0+)
    pam_service: str
    pam_concurrency: int
    token_ttl: int  # seconds a menu's boot links stay valid
    menu_timeout: int  # seconds before the entry menu boots the local disk
    insecure_http: bool
    limits: LoginLimits
    templates: Path | None  # a site's own templates, searched before the bundled ones
    # Slow clients: seconds for a TLS handshake, for each request's head (and body), and for an idle
    # keep-alive connection; and how many connections one client address may hold at once.
    request_timeout: float = 10.0
    connections_per_address: int = 32

    @property
    def host(self) -> str:
        """The URL's host[:port], as iPXE scripts write it after `user:password@`."""
        return self.url.split("://", 1)[1]


@dataclass(frozen=True)
class Config:
    source: str
    store: StoreConfig
    helper: HelperConfig
    iscsi: IscsiConfig
    broker: BrokerConfig | None  # None when the file has no [broker]: enough for the helper
    images: dict[str, ImageConfig]


class _Reader:
    """Reads typed values out of the parsed TOML, recording a problem instead of raising at the first."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.problems: list[str] = []

    def table(self, *keys: str) -> dict[str, Any]:
        node: Any = self.data
        for key in keys:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict):
            self.problems.append(f"[{'.'.join(keys)}] must be a table")
            return {}
        return node

    def value(self, section: str, table: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
        if key not in table:
            if default is None:
                self.problems.append(f"[{section}] {key}: missing; add it")
            return default
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problems.append(f"[{section}] {key}: must be a {kind.__name__}, got {value!r}")
            return default
        return value

    def unknown_keys(self, section: str, table: dict[str, Any], known: set[str]) -> None:
        for key in sorted(set(table) - known):
            self.problems.append(f"[{section}] {key}: unknown key; known keys are {', '.join(sorted(known))}")


def _absolute_path(reader: _Reader, section: str, key: str, text: str | None) -> Path:
    if text is None:
        return Path("/nonexistent")
    path = PurePosixPath(text)
    if not path.is_absolute() or ".." in path.parts:
        reader.problems.append(f"[{section}] {key}: must be an absolute path without '..', got {text!r}")
    return Path(text)


def _portals(
    reader: _Reader, section: str, key: str, items: list[Any] | None, allow_wildcard: bool, example: str
) -> tuple[Portal, ...]:
    portals = []
    for item in items or []:
        try:
            portal = Portal.parse(str(item))
        except ValueError:
            reader.problems.append(f"[{section}] {key}: {item!r} is not ADDRESS:PORT (e.g. \"{example}\")")
            continue
        if portal.is_wildcard and not allow_wildcard:
            reader.problems.append(f"[{section}] {key}: {item!r} is a wildcard; clients need a real address")
            continue
        portals.append(portal)
    return tuple(portals)


_URL_CHARACTERS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]*")
HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def _names_list(r: _Reader, section: str, table: dict[str, Any], key: str, pattern: re.Pattern[str]) -> frozenset[str]:
    items = r.value(section, table, key, list, [])
    good = set()
    for item in items:
        if isinstance(item, str) and (item == EVERYONE and key == "users" or pattern.fullmatch(item)):
            good.add(item)
        else:
            r.problems.append(f"[{section}] {key}: {item!r} is not a valid name")
    return frozenset(good)


def _image(r: _Reader, name: str, table: dict[str, Any]) -> ImageConfig:
    section = f"images.{name}"
    r.unknown_keys(section, table, {"description", "users", "groups", "boot", "kernel", "initrd", "cmdline"})
    description = r.value(section, table, "description", str, name)
    if not description.isprintable() or len(description) > 80 or not script_safe(description):
        r.problems.append(f"[{section}] description: up to 80 printable characters, without $ {{ }} \\ quotes || &&")
        description = name
    users = _names_list(r, section, table, "users", USER_NAME)
    groups = _names_list(r, section, table, "groups", USER_NAME)
    if not users and not groups:
        r.problems.append(
            f"[{section}]: say who may boot it: users = [\"alice\"] and/or groups = [\"students\"] "
            f"(users = [\"*\"] for everyone who can log in)"
        )
    boot_text = r.value(section, table, "boot", str, BootMethod.SANBOOT.value)
    try:
        boot = BootMethod(boot_text)
    except ValueError:
        r.problems.append(f"[{section}] boot: must be one of {', '.join(repr(b.value) for b in BootMethod)}, got {boot_text!r}")
        boot = BootMethod.SANBOOT
    kernel = r.value(section, table, "kernel", str, "")
    initrd = r.value(section, table, "initrd", str, "")
    cmdline = r.value(section, table, "cmdline", str, "")
    if boot is BootMethod.NETROOT:
        if bool(kernel) != bool(initrd):
            r.problems.append(
                f"[{section}] kernel and initrd: give both URLs, or neither (then the kernel and initrd read out of "
                "each published version are served, the ones that match its modules)")
        for key, url in (("kernel", kernel), ("initrd", initrd)):
            if url and not (url.startswith(("http://", "https://", "tftp://")) and _URL_CHARACTERS.fullmatch(url) and script_safe(url)):
                r.problems.append(f"[{section}] {key}: {url!r} is not an http(s):// or tftp:// URL")
        if not cmdline.isprintable() or not script_safe(cmdline) or len(cmdline) > 512:
            r.problems.append(f"[{section}] cmdline: {cmdline!r} has characters a boot script cannot carry")
    elif kernel or initrd or cmdline:
        r.problems.append(f"[{section}]: kernel, initrd and cmdline only apply with boot = \"netroot\"")
    return ImageConfig(name, description, users, groups, boot, kernel, initrd, cmdline)


def _netroot_portal_problem(iscsi: IscsiConfig) -> str | None:
    """Why netroot cannot log in with these portals, or None. dracut's netroot= names one portal (the first
    advertised); dracut runs a SendTargets discovery there and logs in to the record for that same portal.
    LIO answers discovery with the portals it listens on, a wildcard one (0.0.0.0, [::]) as the address the
    server sees itself at: behind NAT, a port forward or any address other than its own, dracut finds no
    record for the portal it was given and the boot fails. So LIO must listen on that very address and port."""
    if not iscsi.advertise or not iscsi.portals:
        return None  # reported as a problem of [iscsi] already
    first = iscsi.advertise[0]
    if first in iscsi.portals:
        return None
    return (f"the first advertised portal {first} (the one netroot= names) is not a portal LIO listens on by that "
            f"address ([iscsi] portals = [{', '.join(repr(str(p)) for p in iscsi.portals)}]). dracut logs in only "
            "to a target that SendTargets discovery at that portal reports for that same portal, and a wildcard "
            "portal reports the address the server sees itself at, so through NAT, a port forward or a DNS name "
            f"there is no record to log in to: add \"{first}\" to [iscsi] portals in place of a wildcard on "
            "that port (LIO must own that address, the one workstations reach), or boot the image by sanboot")


def _positive(r: _Reader, section: str, table: dict[str, Any], key: str, default: float, integer: bool = True) -> Any:
    value = table.get(key, default)
    wrong_type = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    # TOML has nan and inf: neither is a number of seconds (nan > 0 is false; inf would never expire).
    if wrong_type or not 0 < value < math.inf:
        r.problems.append(f"[{section}] {key}: must be a positive {'integer' if integer else 'number'}, got {value!r}")
        return default
    return value


def _in_range(r: _Reader, section: str, table: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value: int = r.value(section, table, key, int, default)
    if not low <= value <= high:
        r.problems.append(f"[{section}] {key}: must be {low}..{high}, got {value}")
        return default
    return value


def _url(r: _Reader, text: str | None, insecure_http: bool) -> tuple[str, str]:
    """The broker's base URL, checked; and its host without the port."""
    if text is None:
        return "https://invalid.invalid", "invalid.invalid"
    parts = urllib.parse.urlsplit(text)
    problem = None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problem = "must be https://HOST[:PORT]"
    elif parts.scheme == "http" and not insecure_http:
        problem = "must be https:// (credentials travel in it); plain http:// needs insecure_http = true, for a lab only"
    elif parts.username is not None or parts.query or parts.fragment or parts.path not in ("", "/") or text.endswith("/"):
        problem = "must be just SCHEME://HOST[:PORT], without a path, user, query or trailing slash"
    elif not (_URL_CHARACTERS.fullmatch(text) and script_safe(text)):
        problem = "has characters that cannot go into an iPXE script"
    else:
        try:
            parts.port
        except ValueError:
            problem = "has an invalid port"
    if problem:
        r.problems.append(f"[broker] url: {text!r} {problem}")
        return "https://invalid.invalid", "invalid.invalid"
    return text, parts.hostname or ""


def _broker(r: _Reader, table: dict[str, Any]) -> BrokerConfig:
    r.unknown_keys("broker", table, {
        "url", "listen", "names", "certificate", "key", "key_type", "pam_service", "pam_concurrency", "token_ttl",
        "menu_timeout", "insecure_http", "limits", "templates", "request_timeout", "connections_per_address",
    })
    insecure_http = r.value("broker", table, "insecure_http", bool, False)
    url, host = _url(r, r.value("broker", table, "url", str), insecure_http)
    listen_raw = r.value("broker", table, "listen", list, ["0.0.0.0:443"])
    listen = _portals(r, "broker", "listen", listen_raw, allow_wildcard=True, example="0.0.0.0:443")
    if not listen_raw:
        r.problems.append("[broker] listen: list at least one ADDRESS:PORT")
    names = [host]
    for name in r.value("broker", table, "names", list, []):
        if not isinstance(name, str) or not (HOST_NAME.fullmatch(name) or _is_address(name)):
            r.problems.append(f"[broker] names: {name!r} is not a host name or an IP address")
        elif name not in names:
            names.append(name)
    pam_service = r.value("broker", table, "pam_service", str, "bootbroker")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", pam_service):
        r.problems.append(f"[broker] pam_service: {pam_service!r} is not a PAM service name (a file in /etc/pam.d)")
    templates_text = r.value("broker", table, "templates", str, "")
    key_type = r.value("broker", table, "key_type", str, "rsa")
    if key_type not in KEY_TYPES:
        r.problems.append(f"[broker] key_type: {key_type!r} is not one of {', '.join(map(repr, KEY_TYPES))} "
                          "(rsa serves every iPXE with HTTPS; ecdsa costs the server less but needs iPXE 2.0)")
    limits_t = table.get("limits", {})
    if not isinstance(limits_t, dict):
        r.problems.append("[broker.limits] must be a table")
        limits_t = {}
    r.unknown_keys("broker.limits", limits_t, {"user_failures", "address_failures", "window", "failure_delay"})
    limits = LoginLimits(
        user_failures=_positive(r, "broker.limits", limits_t, "user_failures", 5),
        address_failures=_positive(r, "broker.limits", limits_t, "address_failures", 30),
        window=_positive(r, "broker.limits", limits_t, "window", 300, integer=False),
        failure_delay=_positive(r, "broker.limits", limits_t, "failure_delay", 2.0, integer=False),
    )
    return BrokerConfig(
        url=url,
        listen=listen,
        names=tuple(names),
        certificate=_absolute_path(r, "broker", "certificate", r.value("broker", table, "certificate", str, "/var/lib/bootbroker/tls/broker.crt")),
        key=_absolute_path(r, "broker", "key", r.value("broker", table, "key", str, "/var/lib/bootbroker/tls/broker.key")),
        key_type=key_type,
        pam_service=pam_service,
        pam_concurrency=_positive(r, "broker", table, "pam_concurrency", 4),
        token_ttl=_positive(r, "broker", table, "token_ttl", 300),
        menu_timeout=_positive(r, "broker", table, "menu_timeout", 10),
        insecure_http=insecure_http,
        limits=limits,
        templates=_absolute_path(r, "broker", "templates", templates_text) if templates_text else None,
        request_timeout=_positive(r, "broker", table, "request_timeout", 10.0, integer=False),
        connections_per_address=_positive(r, "broker", table, "connections_per_address", 32),
    )


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse(data: dict[str, Any], source: str = "<config>") -> Config:
    r = _Reader(data)
    r.unknown_keys("top level", data, {"store", "helper", "iscsi", "broker", "images"})

    store_t = r.table("store")
    r.unknown_keys("store", store_t, {"path", "backend", "cow_percent", "pool_percent", "backup_days",
                                      "min_free_percent", "fill_warn_percent"})
    backend_text = r.value("store", store_t, "backend", str, BackendKind.DM_THIN.value)
    try:
        backend = BackendKind(backend_text)
    except ValueError:
        r.problems.append(
            f"[store] backend: must be one of {', '.join(repr(b.value) for b in BackendKind)}, got {backend_text!r}"
        )
        backend = BackendKind.DM_THIN
    cow_percent = _in_range(r, "store", store_t, "cow_percent", 100, 1, 1000)
    backup_days = _in_range(r, "store", store_t, "backup_days", 30, 1, 3650)
    min_free_percent = _in_range(r, "store", store_t, "min_free_percent", 5, 0, 99)
    fill_warn_percent = _in_range(r, "store", store_t, "fill_warn_percent", 80, 1, 100)
    pool_percent = _in_range(r, "store", store_t, "pool_percent", 75, 5, 95)
    store = StoreConfig(
        path=_absolute_path(r, "store", "path", r.value("store", store_t, "path", str)),
        backend=backend,
        cow_percent=cow_percent,
        backup_days=backup_days,
        min_free_percent=min_free_percent,
        fill_warn_percent=fill_warn_percent,
        pool_percent=pool_percent,
    )

    helper_t = r.table("helper")
    r.unknown_keys("helper", helper_t, {"socket", "broker_group", "helpdesk_group"})
    helper = HelperConfig(
        socket=_absolute_path(r, "helper", "socket", r.value("helper", helper_t, "socket", str, "/run/bootbroker/helper.sock")),
        broker_group=r.value("helper", helper_t, "broker_group", str, "bootbroker"),
        helpdesk_group=r.value("helper", helper_t, "helpdesk_group", str, "bootbroker-helpdesk"),
    )

    iscsi_t = r.table("iscsi")
    r.unknown_keys("iscsi", iscsi_t, {"domain", "date", "portals", "advertise"})
    domain = r.value("iscsi", iscsi_t, "domain", str)
    if domain is not None and not DOMAIN.fullmatch(domain):
        r.problems.append(f"[iscsi] domain: {domain!r} is not a lower-case DNS domain such as \"example.org\"")
    date = r.value("iscsi", iscsi_t, "date", str)
    if date is not None and not IQN_DATE.fullmatch(date):
        r.problems.append(f"[iscsi] date: {date!r} is not YYYY-MM (a month the domain was yours)")
    portals_raw = r.value("iscsi", iscsi_t, "portals", list)
    portals = _portals(r, "iscsi", "portals", portals_raw, allow_wildcard=True, example="192.0.2.10:3260")
    if portals_raw == []:
        r.problems.append("[iscsi] portals: list at least one ADDRESS:PORT for LIO to listen on")
    advertise_raw = r.value("iscsi", iscsi_t, "advertise", list, [])
    advertise = _portals(r, "iscsi", "advertise", advertise_raw, allow_wildcard=False, example="192.0.2.10:3260")
    if not advertise_raw:
        if any(p.is_wildcard for p in portals):
            r.problems.append("[iscsi] advertise: required when a portal is a wildcard; list the addresses clients use")
        advertise = portals
    iscsi = IscsiConfig(iqn=IqnScheme(date or "1970-01", domain or "invalid.invalid"), portals=portals, advertise=advertise)
    netroot_portal = _netroot_portal_problem(iscsi)

    images: dict[str, ImageConfig] = {}
    for name, table in r.table("images").items():
        if not IMAGE_NAME.fullmatch(name):
            r.problems.append(f"[images.{name}]: image names are 1-63 of a-z, 0-9 and '-'")
            continue
        if not isinstance(table, dict):
            r.problems.append(f"[images.{name}] must be a table")
            continue
        images[name] = _image(r, name, table)
    if not images:
        r.problems.append("[images]: define at least one image, e.g. [images.debian] description = \"Debian 12\"")
    for name, image in images.items():
        if image.boot is BootMethod.NETROOT and netroot_portal:
            r.problems.append(f"[images.{name}] boot = \"netroot\": {netroot_portal}")

    for name in images:
        longest = iscsi.iqn.longest_name(name)
        if longest > MAX_IQN_LENGTH and domain is not None:
            r.problems.append(
                f"[images.{name}]: with [iscsi] domain {domain!r}, a login's initiator name would be up to "
                f"{longest} bytes, over LIO's {MAX_IQN_LENGTH}: shorten the image name or the domain "
                f"by {longest - MAX_IQN_LENGTH} characters")
        dm_name = len(storage_object_name(name, "x" * MAX_LABEL_LENGTH))
        if backend in (BackendKind.DM_SNAPSHOT, BackendKind.DM_THIN) and dm_name > MAX_DM_NAME_LENGTH:
            r.problems.append(
                f"[images.{name}]: with backend \"{backend.value}\", its overlays' device-mapper names would be up to "
                f"{dm_name} bytes, over {MAX_DM_NAME_LENGTH}: shorten the image name by {dm_name - MAX_DM_NAME_LENGTH} characters")

    broker = _broker(r, r.table("broker")) if "broker" in data else None

    if r.problems:
        raise ConfigError(source, r.problems)
    return Config(source=source, store=store, helper=helper, iscsi=iscsi, broker=broker, images=images)


def load(path: Path) -> Config:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found; pass --config PATH or create it (see README)"]) from None
    except PermissionError:
        raise ConfigError(str(path), ["cannot read the file (permission denied)"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [f"not valid TOML: {e}"]) from None
    return parse(data, str(path))
