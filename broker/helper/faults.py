"""Crash points: places where the helper dies on purpose in the lab's fault tests.

Each point marks a step after which a crash leaves half-done work that `Helper.start` must repair. The
helper kills itself with SIGKILL (no cleanup, no `finally`, exactly like a power cut to the process) at
the point named in the environment variable BOOTBROKER_CRASH_AT when it was started, once it has started
(see `arm`). Unset, as it always is outside tests/lab/test_faults.py, a point costs one string comparison.
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT = "BOOTBROKER_CRASH_AT"
_CRASH_AT = os.environ.get(ENVIRONMENT, "")

POINTS: dict[str, str] = {
    # ensure_session
    "overlay-created": "the overlay's disk is made in the scratch directory, not yet renamed into place",
    "overlay-committed": "the overlay is in place; no target yet",
    "storage-object-created": "LIO has the overlay's storage object; no target yet",
    "target-created": "the target is complete; the previous session is still recorded and its ACL there",
    "session-recorded": "the new session is recorded; LIO still has the previous session's ACL",
    "acl-replaced": "the new session's ACL replaced the previous one; the broker never gets the answer",
    # reset
    "reset-target-deleted": "the user's target is gone; the session record is still there",
    "reset-detached": "the session is forgotten and the disk detached; the overlay is not yet a backup",
    # publish
    "publish-staged": "the new version is copied into the scratch directory, not yet numbered",
    "publish-renamed": "the new version has its number; it is not current yet",
}


_armed = False


def arm() -> None:
    """Let the points fire from now on: called once the helper has started, so that its start-up repairs
    (which pass some of the same points) run unharmed and the crash hits the operation under test."""
    global _armed
    _armed = True


def crash_point(name: str) -> None:
    assert name in POINTS, name
    if _armed and name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
