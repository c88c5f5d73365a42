"""The gate before PAM: every login attempt is reserved in the failed-login limiter before PAM is asked, so
attempts in flight count against the limits (issue 15: they all passed a check made first), and counted in
the metrics by outcome."""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..shared.errors import Busy, LoginFailed, TooManyAttempts
from ..shared.identifiers import USER_NAME, loggable
from .limiter import WAIT, LoginLimiter
from .metrics import Metrics


class Authenticator(Protocol):
    async def authenticate(self, user: str, password: str) -> bool: ...


class LoginGate:
    def __init__(self, authenticator: Authenticator, limiter: LoginLimiter, metrics: Metrics) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.metrics = metrics
        self._attempt_ended = asyncio.Condition()  # logins waiting for an attempt in flight to end

    async def authenticate(self, user: str, password: str, address: str) -> None:
        """Ask PAM within the limits; return only if it accepted. The attempt is reserved in the limiter
        before PAM is awaited, so attempts in flight count (issue 15: they all passed a check made first)."""
        shown = loggable(user, 64)  # every valid name fits
        async with self._attempt_ended:
            while (wait := self.limiter.reserve(user, address)) == WAIT:
                await self._attempt_ended.wait()  # only attempts in flight fill the limit: until one ends
        if wait > 0:
            self.metrics.login("limited")
            raise TooManyAttempts(f"login of {shown} from {address} refused: too many failures", wait)
        try:
            try:
                ok = bool(USER_NAME.fullmatch(user)) and await self.authenticator.authenticate(user, password)
            except Busy:
                # PAM was not asked: no failure to record (the answer says nothing about the account); the
                # person is told to try again.
                self.limiter.released(user, address)
                self.metrics.login("busy")
                raise
            except BaseException:
                self.limiter.released(user, address)
                raise
            if not ok:
                self.limiter.failed(user, address)
                self.metrics.login("failed")
                raise LoginFailed(f"login of {shown} from {address} failed")
            self.limiter.succeeded(user, address)
            self.metrics.login("ok")
        finally:
            async with self._attempt_ended:
                self._attempt_ended.notify_all()
