"""The helper's record of live boot sessions: one small JSON file per session, root-only (0600), each
replaced atomically, in a 0700 directory.

It is what lets a restarted helper, or a rebooted server, put back the NodeACLs of sessions that were
live, so workstations reconnect with the credentials they were given. It holds CHAP secrets: it is the
only place that may. One file per session keeps a login's write the same size with 10 sessions or
5,000 (a single file would be rewritten whole on every login).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..shared.files import remove_durably, rename_durably, write_atomically

log = logging.getLogger(__name__)

FORMAT = 1
UNUSABLE = "unusable"  # records start-up could not use, kept for the admin (in the same 0700 directory)


@dataclass(frozen=True)
class BootSession:
    image: str
    user: str
    label: str
    version: int
    initiator: str
    chap_user: str
    chap_secret: str
    since: float

    @classmethod
    def from_record(cls, data: object) -> BootSession:
        """A session from a record's JSON; ValueError saying what is wrong with it."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a session record of format {FORMAT}")
        kinds: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float)}
        wanted = {f.name: kinds[str(f.type)] for f in fields(cls)}
        if set(data) - {"format"} != set(wanted):
            raise ValueError(f"fields {sorted(set(data) - {'format'})}, expected {sorted(wanted)}")
        for name, kind in wanted.items():
            if isinstance(data[name], bool) or not isinstance(data[name], kind):
                raise ValueError(f"field {name} is {type(data[name]).__name__}")
        return cls(**{name: data[name] for name in wanted})


class SessionBook:
    """The records, loaded once at start and kept in memory. Safe to read from any thread while one
    writer (the helper, under its lock) changes them: readers never wait for the helper's lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sessions: dict[tuple[str, str], BootSession] = {}
        self._guard = threading.Lock()  # for the dict only, held for microseconds
        self.set_aside: list[str] = []  # what start-up could not use, for `health` and `sessions`

    def _file(self, image: str, label: str) -> Path:
        return self.directory / f"{image}.{label}.json"

    def load(self) -> None:
        """Read every record; one that cannot be read is moved to unusable/ (logged, listed in `set_aside`)
        and the rest load: one damaged file must not keep every other user from booting."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        sessions: dict[tuple[str, str], BootSession] = {}
        self.set_aside = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                session = BootSession.from_record(json.loads(path.read_bytes()))
            except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                self._set_aside(path, str(e))
                continue
            sessions[(session.image, session.user)] = session
        with self._guard:
            self._sessions = sessions

    def set_aside_session(self, session: BootSession, reason: str) -> None:
        """Move a record that loaded but cannot be used (its image left the configuration) to unusable/."""
        with self._guard:
            self._sessions.pop((session.image, session.user), None)
        self._set_aside(self._file(session.image, session.label), reason)

    def _set_aside(self, path: Path, reason: str) -> None:
        unusable = self.directory / UNUSABLE
        unusable.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o600)  # it may hold a CHAP secret, whatever else is wrong with it
        rename_durably(path, unusable / path.name)
        note = f"session record {path.name}: {reason}; moved to {unusable}"
        log.error("%s (its workstation must log in again)", note)
        self.set_aside.append(note)

    def get(self, image: str, user: str) -> BootSession | None:
        with self._guard:
            return self._sessions.get((image, user))

    def put(self, session: BootSession) -> None:
        data = {"format": FORMAT, **asdict(session)}
        write_atomically(self._file(session.image, session.label), json.dumps(data).encode(), 0o600)
        with self._guard:
            self._sessions[(session.image, session.user)] = session

    def remove(self, image: str, user: str) -> None:
        with self._guard:
            session = self._sessions.pop((image, user), None)
        if session is not None:
            remove_durably(self._file(image, session.label))

    def all(self) -> list[BootSession]:
        with self._guard:
            sessions = list(self._sessions.values())
        return sorted(sessions, key=lambda s: (s.image, s.user))

    def __len__(self) -> int:
        return len(self._sessions)
