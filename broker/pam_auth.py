"""Authentication through PAM: the only module that imports the PAM binding (python-pam).

Whatever the site's PAM service does (pam_unix, pam_sss, pam_krb5, ...) decides. PAM calls block, so they
run in a small thread pool of their own; its size bounds how many PAM conversations run at once, and the
queue in front of it absorbs a boot storm.

Unprivileged callers and pam_unix: pam_unix reads /etc/shadow itself only when it can; otherwise it asks
the setgid helper unix_chkpwd, which checks nobody's password but the caller's own. A broker that logs in
local unix accounts must therefore be in group `shadow`; sites with SSSD/LDAP or Kerberos use pam_sss or
pam_krb5, which need no privilege (see scripts/pam.d/bootbroker).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import pam

log = logging.getLogger(__name__)

MAX_PASSWORD_LENGTH = 512


class PamAuthenticator:
    def __init__(self, service: str, concurrency: int) -> None:
        self.service = service
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pam")

    def _check(self, user: str, password: str) -> bool:
        # One handle per conversation: python-pam's object keeps per-call state and is not thread-safe.
        handle = pam.pam()
        ok = bool(handle.authenticate(user, password, service=self.service, resetcreds=False))
        if not ok:
            log.info("PAM refused %s: %s", user, handle.reason)
        return ok

    async def authenticate(self, user: str, password: str) -> bool:
        """True when PAM's auth and account stacks of the service accept this user and password."""
        if not password or len(password) > MAX_PASSWORD_LENGTH or "\0" in password or "\0" in user:
            return False
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._check, user, password)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
