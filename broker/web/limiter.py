"""Failed-login rate limiting per user name and per client address.

Each key keeps the times of its recent failures; a key with too many in the window is refused until the
oldest leaves it. An attempt is reserved before PAM is asked and counts against both keys while PAM thinks
(seconds, in a thread): otherwise every request already waiting on PAM would have passed a check made
before any of them failed, and 32 guesses at once would all reach PAM. The reservation then becomes a
failure, or is given back (a success, or PAM never asked). An attempt that finds the limit reached only
by attempts in flight is not refused (they may all succeed: a class behind one NAT address logging in
at 8:00) but told to wait for one of them to end; only recorded failures refuse. A success clears the user's failures (not the
address's: one good account must not launder an address that is guessing others).

Keys: a user name whatever its case (`Alice` and `alice` are one account to PAM and NSS on most sites, and
must not be two budgets); an IPv4 address, or an IPv6 client's /64 (one host has a whole /64 to choose
addresses from, so a per-address limit would be no bound). Memory stays bounded: expired keys are swept as
failures arrive, each key keeps at most its limit of timestamps, and attempts in flight are bounded by the
requests in flight.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter, deque
from collections.abc import Callable

from ..shared.config import LoginLimits

SWEEP_EVERY = 1024
WAIT = -1.0  # reserve(): the limit is full of attempts in flight; ask again when one has ended
IPV6_CLIENT_PREFIX = 64
MAX_USER_KEY = 64  # every valid name fits; longer ones share their key by prefix


def user_key(user: str) -> str:
    """The limiter's key for a typed user name: case-insensitive, bounded."""
    return user[:MAX_USER_KEY].casefold()


def address_key(address: str) -> str:
    """The limiter's key for a client address: IPv4 as it is (IPv4-mapped IPv6 too), IPv6 as its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP address (aiohttp's "unknown"): as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        # int() drops a link-local address's zone: one link's clients are one /64 whatever their interface
        return str(ipaddress.IPv6Network((int(ip), IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


class LoginLimiter:
    def __init__(self, limits: LoginLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._by_user: dict[str, deque[float]] = {}
        self._by_address: dict[str, deque[float]] = {}
        self._in_flight_user: Counter[str] = Counter()
        self._in_flight_address: Counter[str] = Counter()
        self._since_sweep = 0

    def _wait(self, table: dict[str, deque[float]], in_flight: Counter[str], key: str, limit: int,
              now: float) -> float:
        times = table.get(key)
        if times is not None:
            while times and times[0] <= now - self.limits.window:
                times.popleft()
            if not times:
                del table[key]
                times = None
        failures = len(times or ())
        if failures >= limit:  # the first slot to free: the oldest failure's
            return times[failures - limit] + self.limits.window - now if times else 0.0
        return WAIT if failures + in_flight[key] >= limit else 0.0

    def _keys(self, user: str, address: str) -> tuple[str, str]:
        return user_key(user), address_key(address)

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until this user may try again from this address because of its failures; 0 when it may
        now; WAIT (negative) when only attempts in flight fill the limit: try again when one has ended."""
        now = self._clock()
        user, address = self._keys(user, address)
        waits = (
            self._wait(self._by_user, self._in_flight_user, user, self.limits.user_failures, now),
            self._wait(self._by_address, self._in_flight_address, address, self.limits.address_failures, now),
        )
        return max(waits) if max(waits) > 0 else min(waits)

    def reserve(self, user: str, address: str) -> float:
        """Reserve an attempt: 0 when reserved, and the caller must then end it with exactly one of
        `failed`, `succeeded` or `released`; WAIT when it must wait for an attempt in flight to end (then
        ask again); otherwise the seconds until one may try. Nothing is reserved unless 0 is returned."""
        wait = self.retry_after(user, address)
        if wait == 0:
            user, address = self._keys(user, address)
            self._in_flight_user[user] += 1
            self._in_flight_address[address] += 1
        return wait

    def _end(self, user: str, address: str) -> None:
        for in_flight, key in ((self._in_flight_user, user), (self._in_flight_address, address)):
            in_flight[key] -= 1
            if in_flight[key] <= 0:
                del in_flight[key]

    def failed(self, user: str, address: str) -> None:
        """The reserved attempt failed: it is recorded against the user and the address."""
        now = self._clock()
        user, address = self._keys(user, address)
        self._end(user, address)
        for table, key, limit in (
            (self._by_user, user, self.limits.user_failures),
            (self._by_address, address, self.limits.address_failures),
        ):
            table.setdefault(key, deque(maxlen=limit)).append(now)
        self._since_sweep += 1
        if self._since_sweep >= SWEEP_EVERY:
            self._sweep(now)

    def succeeded(self, user: str, address: str) -> None:
        """The reserved attempt succeeded: given back, and the user's failures are cleared."""
        user, address = self._keys(user, address)
        self._end(user, address)
        self._by_user.pop(user, None)

    def released(self, user: str, address: str) -> None:
        """The reserved attempt never reached PAM (busy, an error): given back, nothing recorded."""
        self._end(*self._keys(user, address))

    def _sweep(self, now: float) -> None:
        self._since_sweep = 0
        for table in (self._by_user, self._by_address):
            for key in [k for k, times in table.items() if times[-1] <= now - self.limits.window]:
                del table[key]

    def __len__(self) -> int:
        """Keys held: failures in the window and attempts in flight."""
        return (len(self._by_user) + len(self._by_address)
                + len(self._in_flight_user) + len(self._in_flight_address))
