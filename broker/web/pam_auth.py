"""Authentication through PAM: the only module that imports the PAM binding (python-pam).

Whatever the site's PAM service does (pam_unix, pam_sss, pam_krb5, ...) decides. PAM calls block, so they
run in a small thread pool of their own; its size bounds how many PAM conversations run at once, and the
queue in front of it absorbs a boot storm. The queue is bounded by the wait it means, not by a count: a
login that would wait longer than `max_wait` for a PAM thread (the conversations ahead of it, drained
`concurrency` at a time, at the recent conversations' pace) is answered Busy at once, without asking
PAM. A count cannot tell a storm of good logins (18 ms of hashing each: 500 drain in seconds) from a flood
of wrong passwords that each hold a thread for pam_unix's 2 s failure delay; the wait can. The bound is
below iPXE's 120 s: iPXE gives up on an HTTP answer idle that long, and PAM would then work for nobody.

Unprivileged callers and pam_unix: pam_unix reads /etc/shadow itself only when it can; otherwise it asks
the setgid helper unix_chkpwd, which checks nobody's password but the caller's own. A broker that logs in
local unix accounts must therefore be in group `shadow`; sites with SSSD/LDAP or Kerberos use pam_sss or
pam_krb5, which need no privilege (see scripts/pam.d/bootbroker).

PAM threads run at a lower CPU priority than the event loop. pam_unix hashes the password in our process
(yescrypt, Debian's default: 18 ms of CPU on a server core, 0.6 s under the lab's emulation); in a boot
storm the PAM threads would otherwise take the CPUs from the event loop, whose TLS handshakes must finish
within `request_timeout` of their connection's arrival. Hashing waits; the handshakes and answers go first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pam

from ..shared.errors import Busy
from ..shared.identifiers import loggable

log = logging.getLogger(__name__)

MAX_PASSWORD_LENGTH = 512
NICENESS = 10  # added to the PAM threads' nice value (Linux keeps one per thread)
MAX_WAIT = 60.0  # seconds a login may expect to wait for PAM; half iPXE's idle timeout (HTTP_WATCHDOG_SECONDS)
# Seconds a conversation is assumed to take until some are measured: pam_unix's failure delay, the longest
# usual one, so the bound holds from the start (with 1 s, a flood at start-up queued 120 s of work).
FIRST_ESTIMATE = 2.0
SMOOTHING = 0.2  # weight of the latest conversation in the running estimate


# observe(seconds, cpu_seconds) of each PAM conversation: its time in a PAM thread, and that thread's CPU time
# (modules such as pam_unix hash the password in our process).
Observer = Callable[[float, float], None]


def _yield_cpu() -> None:
    """Lower the calling PAM thread's priority (any process may lower its own)."""
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + NICENESS))
    except OSError as e:
        log.warning("PAM threads keep the event loop's CPU priority: %s", e)


class PamAuthenticator:
    def __init__(self, service: str, concurrency: int, observe: Observer | None = None, max_wait: float = MAX_WAIT,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.service = service
        self.observe = observe
        self.concurrency = concurrency
        self.max_wait = max_wait
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pam", initializer=_yield_cpu)
        self._waiting = 0  # conversations running or queued
        self._estimate = FIRST_ESTIMATE  # seconds per conversation, a running average

    def _check(self, user: str, password: str) -> tuple[bool, float, float]:
        started, cpu_started = self._clock(), time.thread_time()
        # One handle per conversation: python-pam's object keeps per-call state and is not thread-safe.
        handle = pam.pam()
        ok = bool(handle.authenticate(user, password, service=self.service, resetcreds=False))
        if not ok:
            log.info("PAM refused %s: %s", loggable(user), handle.reason)
        return ok, self._clock() - started, time.thread_time() - cpu_started

    async def authenticate(self, user: str, password: str) -> bool:
        """True when PAM's auth and account stacks of the service accept this user and password; Busy,
        without asking PAM, when this conversation would wait longer than `max_wait` for a thread."""
        if not password or len(password) > MAX_PASSWORD_LENGTH or "\0" in password or "\0" in user:
            return False
        expected = (self._waiting // self.concurrency + 1) * self._estimate
        if expected > self.max_wait:
            raise Busy(f"{self._waiting} PAM conversations wait (about {expected:.0f} s): not queued")
        self._waiting += 1
        try:
            ok, seconds, cpu_seconds = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._check, user, password)
        finally:
            self._waiting -= 1
        self._estimate += SMOOTHING * (seconds - self._estimate)  # in the event loop's thread, like observe
        if self.observe is not None:
            self.observe(seconds, cpu_seconds)  # in the event loop's thread: no lock needed
        return ok

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
