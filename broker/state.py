"""The helper's record of live boot sessions: one JSON file, root-only (0600), replaced atomically.

It is what lets a restarted helper, or a rebooted server, put back the NodeACLs of sessions that were
live, so workstations reconnect with the credentials they were given. It holds CHAP secrets: it is the
only file that may.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .store import write_atomically

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
    def __init__(self, path: Path) -> None:
        self.path = path
        self._sessions: dict[tuple[str, str], BootSession] = {}

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        if data.get("format") != FORMAT:
            raise ValueError(f"{self.path}: unknown state format {data.get('format')!r}")
        self._sessions = {(s["image"], s["user"]): BootSession(**s) for s in data["sessions"]}

    def _save(self) -> None:
        data = {"format": FORMAT, "sessions": [asdict(s) for s in self._sessions.values()]}
        write_atomically(self.path, json.dumps(data, indent=1).encode(), 0o600)

    def get(self, image: str, user: str) -> BootSession | None:
        return self._sessions.get((image, user))

    def put(self, session: BootSession) -> None:
        self._sessions[(session.image, session.user)] = session
        self._save()

    def remove(self, image: str, user: str) -> None:
        if self._sessions.pop((image, user), None) is not None:
            self._save()

    def all(self) -> list[BootSession]:
        return sorted(self._sessions.values(), key=lambda s: (s.image, s.user))
