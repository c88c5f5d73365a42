"""The helper's record of live boot sessions: one small JSON file per session, root-only (0600), each
replaced atomically, in a 0700 directory.

It is what lets a restarted helper, or a rebooted server, put back the NodeACLs of sessions that were
live, so workstations reconnect with the credentials they were given. It holds CHAP secrets: it is the
only place that may. One file per session keeps a login's write the same size with 10 sessions or
5,000 (a single file would be rewritten whole on every login).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .files import write_atomically

FORMAT = 1


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


class SessionBook:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sessions: dict[tuple[str, str], BootSession] = {}

    def _file(self, image: str, label: str) -> Path:
        return self.directory / f"{image}.{label}.json"

    def load(self) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self._sessions = {}
        for path in self.directory.glob("*.json"):
            data = json.loads(path.read_text())
            if data.pop("format", None) != FORMAT:
                raise ValueError(f"{path}: unknown session record format")
            session = BootSession(**data)
            self._sessions[(session.image, session.user)] = session

    def get(self, image: str, user: str) -> BootSession | None:
        return self._sessions.get((image, user))

    def put(self, session: BootSession) -> None:
        data = {"format": FORMAT, **asdict(session)}
        write_atomically(self._file(session.image, session.label), json.dumps(data).encode(), 0o600)
        self._sessions[(session.image, session.user)] = session

    def remove(self, image: str, user: str) -> None:
        session = self._sessions.pop((image, user), None)
        if session is not None:
            self._file(image, session.label).unlink(missing_ok=True)

    def all(self) -> list[BootSession]:
        return sorted(self._sessions.values(), key=lambda s: (s.image, s.user))

    def __len__(self) -> int:
        return len(self._sessions)
