"""Authentication through PAM: the only module that imports the PAM binding (python-pam).

Whatever the site's PAM service does (pam_unix, pam_sss, pam_krb5, ...) decides. PAM calls block, so they
run in a small thread pool of their own; its size bounds how many PAM conversations run at once, and the
queue in front of it absorbs a boot storm.

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

log = logging.getLogger(__name__)

MAX_PASSWORD_LENGTH = 512
NICENESS = 10  # added to the PAM threads' nice value (Linux keeps one per thread)


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
    def __init__(self, service: str, concurrency: int, observe: Observer | None = None) -> None:
        self.service = service
        self.observe = observe
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pam", initializer=_yield_cpu)

    def _check(self, user: str, password: str) -> tuple[bool, float, float]:
        started, cpu_started = time.perf_counter(), time.thread_time()
        # One handle per conversation: python-pam's object keeps per-call state and is not thread-safe.
        handle = pam.pam()
        ok = bool(handle.authenticate(user, password, service=self.service, resetcreds=False))
        if not ok:
            log.info("PAM refused %s: %s", user, handle.reason)
        return ok, time.perf_counter() - started, time.thread_time() - cpu_started

    async def authenticate(self, user: str, password: str) -> bool:
        """True when PAM's auth and account stacks of the service accept this user and password."""
        if not password or len(password) > MAX_PASSWORD_LENGTH or "\0" in password or "\0" in user:
            return False
        ok, seconds, cpu_seconds = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._check, user, password)
        if self.observe is not None:
            self.observe(seconds, cpu_seconds)  # in the event loop's thread: no lock needed
        return ok

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
