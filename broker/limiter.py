"""Failed-login rate limiting per user name and per client address.

Each key keeps the times of its recent failures; a key with too many in the window is refused until the
oldest leaves it. A success clears the user's failures (not the address's: one good account must not
launder an address that is guessing others). Memory stays bounded: expired keys are swept as failures
arrive, and each key keeps at most its limit of timestamps.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .config import LoginLimits

SWEEP_EVERY = 1024


class LoginLimiter:
    def __init__(self, limits: LoginLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._by_user: dict[str, deque[float]] = {}
        self._by_address: dict[str, deque[float]] = {}
        self._since_sweep = 0

    def _wait(self, table: dict[str, deque[float]], key: str, limit: int, now: float) -> float:
        times = table.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.limits.window:
            times.popleft()
        if not times:
            del table[key]
            return 0.0
        return times[0] + self.limits.window - now if len(times) >= limit else 0.0

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until this user may try again from this address; 0 when it may now."""
        now = self._clock()
        return max(
            self._wait(self._by_user, user, self.limits.user_failures, now),
            self._wait(self._by_address, address, self.limits.address_failures, now),
        )

    def failed(self, user: str, address: str) -> None:
        now = self._clock()
        for table, key, limit in (
            (self._by_user, user, self.limits.user_failures),
            (self._by_address, address, self.limits.address_failures),
        ):
            table.setdefault(key, deque(maxlen=limit)).append(now)
        self._since_sweep += 1
        if self._since_sweep >= SWEEP_EVERY:
            self._sweep(now)

    def succeeded(self, user: str) -> None:
        self._by_user.pop(user, None)

    def _sweep(self, now: float) -> None:
        self._since_sweep = 0
        for table in (self._by_user, self._by_address):
            for key in [k for k, times in table.items() if times[-1] <= now - self.limits.window]:
                del table[key]

    def __len__(self) -> int:
        return len(self._by_user) + len(self._by_address)
