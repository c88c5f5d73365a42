"""Open connections per client, refused above a limit: the broker caps each client address
(`[broker] connections_per_address`), the helper each peer uid. Shared by both sides, so it imports
nothing but the standard library."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL = 60.0  # at most one warning a minute per client about refused connections


class ConnectionCap:
    """Open connections per client (an address, `uid N`), refused above `limit`; a client's entry goes when
    its count reaches 0. A refusal is logged once a minute per client: a client opening connections without
    end must not flood the log as well."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()
        self._warned: dict[str, float] = {}
        self._clock = clock

    def admit(self, client: str) -> bool:
        if self._open[client] >= self.limit:
            now = self._clock()
            if now - self._warned.get(client, -REFUSAL_LOG_INTERVAL) >= REFUSAL_LOG_INTERVAL:
                self._warned[client] = now
                log.warning("%s holds %d connections: further ones are closed as they open", client, self.limit)
            return False
        self._open[client] += 1
        return True

    def release(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]
            self._warned.pop(client, None)

    def open(self, client: str) -> int:
        return self._open.get(client, 0)
