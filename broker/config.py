"""The configuration: one TOML file, loaded once into a frozen, typed tree and validated as a whole.

Every problem is collected and reported together, each saying which key and what to write instead, so an
admin fixes the file in one pass.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ConfigError
from .identifiers import DOMAIN, IMAGE_NAME, IQN_DATE, IqnScheme

DEFAULT_PATH = Path("/etc/bootbroker/bootbroker.toml")


class BackendKind(StrEnum):
    REFLINK = "reflink"
    DM_SNAPSHOT = "dm-snapshot"


@dataclass(frozen=True)
class Portal:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified


@dataclass(frozen=True)
class StoreConfig:
    path: Path
    backend: BackendKind
    # dm-snapshot only: size of each overlay's copy-on-write file, as a percentage of the image size.
    cow_percent: int

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


@dataclass(frozen=True)
class ImageConfig:
    name: str
    description: str


@dataclass(frozen=True)
class Config:
    source: str
    store: StoreConfig
    helper: HelperConfig
    iscsi: IscsiConfig
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


def _portals(reader: _Reader, key: str, items: list[Any] | None, allow_wildcard: bool) -> tuple[Portal, ...]:
    portals = []
    for item in items or []:
        host, sep, port_text = str(item).rpartition(":")
        host = host.strip("[]")
        try:
            portal = Portal(host, int(port_text))
            wildcard = portal.is_wildcard
            if not sep or not 0 < portal.port < 65536:
                raise ValueError
        except ValueError:
            reader.problems.append(f"[iscsi] {key}: {item!r} is not ADDRESS:PORT (e.g. \"192.0.2.10:3260\")")
            continue
        if wildcard and not allow_wildcard:
            reader.problems.append(f"[iscsi] {key}: {item!r} is a wildcard; clients need a real address")
            continue
        portals.append(portal)
    return tuple(portals)


def parse(data: dict[str, Any], source: str = "<config>") -> Config:
    r = _Reader(data)
    r.unknown_keys("top level", data, {"store", "helper", "iscsi", "images"})

    store_t = r.table("store")
    r.unknown_keys("store", store_t, {"path", "backend", "cow_percent"})
    backend_text = r.value("store", store_t, "backend", str, BackendKind.REFLINK.value)
    try:
        backend = BackendKind(backend_text)
    except ValueError:
        r.problems.append(
            f"[store] backend: must be one of {', '.join(repr(b.value) for b in BackendKind)}, got {backend_text!r}"
        )
        backend = BackendKind.REFLINK
    cow_percent = r.value("store", store_t, "cow_percent", int, 100)
    if not 1 <= cow_percent <= 1000:
        r.problems.append(f"[store] cow_percent: must be 1..1000, got {cow_percent}")
    store = StoreConfig(
        path=_absolute_path(r, "store", "path", r.value("store", store_t, "path", str)),
        backend=backend,
        cow_percent=cow_percent,
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
    portals = _portals(r, "portals", portals_raw, allow_wildcard=True)
    if portals_raw == []:
        r.problems.append("[iscsi] portals: list at least one ADDRESS:PORT for LIO to listen on")
    advertise_raw = r.value("iscsi", iscsi_t, "advertise", list, [])
    advertise = _portals(r, "advertise", advertise_raw, allow_wildcard=False)
    if not advertise_raw:
        if any(p.is_wildcard for p in portals):
            r.problems.append("[iscsi] advertise: required when a portal is a wildcard; list the addresses clients use")
        advertise = portals
    iscsi = IscsiConfig(iqn=IqnScheme(date or "1970-01", domain or "invalid.invalid"), portals=portals, advertise=advertise)

    images: dict[str, ImageConfig] = {}
    for name, table in r.table("images").items():
        if not IMAGE_NAME.fullmatch(name):
            r.problems.append(f"[images.{name}]: image names are 1-63 of a-z, 0-9 and '-'")
            continue
        if not isinstance(table, dict):
            r.problems.append(f"[images.{name}] must be a table")
            continue
        r.unknown_keys(f"images.{name}", table, {"description"})
        images[name] = ImageConfig(name, r.value(f"images.{name}", table, "description", str, name))
    if not images:
        r.problems.append("[images]: define at least one image, e.g. [images.debian] description = \"Debian 12\"")

    if r.problems:
        raise ConfigError(source, r.problems)
    return Config(source=source, store=store, helper=helper, iscsi=iscsi, images=images)


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
