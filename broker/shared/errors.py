"""One error hierarchy for the whole project.

Every error that can cross the helper socket has a code from the closed set `ErrorCode`; the broker maps
the same codes to HTTP statuses and iPXE messages. The message is short and safe to show a person: it never
carries a secret, and details that only an admin needs go to the log instead.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"  # malformed message, wrong types, unknown operation
    UNSUPPORTED_VERSION = "unsupported_version"
    BAD_IDENTIFIER = "bad_identifier"  # an image or user name that fails validation
    UNKNOWN_IMAGE = "unknown_image"
    NOT_PERMITTED = "not_permitted"  # the caller may not run this operation
    NO_SUCH_SESSION = "no_such_session"
    NO_SUCH_OVERLAY = "no_such_overlay"
    CONFLICT = "conflict"  # the request contradicts what exists (e.g. a label owned by another user)
    STORE_FULL = "store_full"
    BACKEND_FAILURE = "backend_failure"  # storage or LIO refused; the half-done step was rolled back
    HELPER_UNAVAILABLE = "helper_unavailable"  # client side only: no helper answered
    BUSY = "busy"  # too many requests already wait (for the helper's lock, for PAM): try again shortly
    INTERNAL = "internal"
    # The broker's own: they never cross the helper socket.
    LOGIN_FAILED = "login_failed"  # wrong or unknown user name or password (never says which)
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    LOGIN_EXPIRED = "login_expired"  # a boot link whose token expired or does not verify


class BrokerError(Exception):
    """Base of every error this project raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(BrokerError):
    code = ErrorCode.BAD_REQUEST


class UnsupportedVersion(BrokerError):
    code = ErrorCode.UNSUPPORTED_VERSION


class BadIdentifier(BrokerError):
    code = ErrorCode.BAD_IDENTIFIER


class UnknownImage(BrokerError):
    code = ErrorCode.UNKNOWN_IMAGE


class NotPermitted(BrokerError):
    code = ErrorCode.NOT_PERMITTED


class NoSuchSession(BrokerError):
    code = ErrorCode.NO_SUCH_SESSION


class NoSuchOverlay(BrokerError):
    code = ErrorCode.NO_SUCH_OVERLAY


class Conflict(BrokerError):
    code = ErrorCode.CONFLICT


class StoreFull(BrokerError):
    code = ErrorCode.STORE_FULL


class BackendFailure(BrokerError):
    code = ErrorCode.BACKEND_FAILURE


class HelperUnavailable(BrokerError):
    code = ErrorCode.HELPER_UNAVAILABLE


class Busy(BrokerError):
    code = ErrorCode.BUSY


class InternalError(BrokerError):
    code = ErrorCode.INTERNAL


class LoginFailed(BrokerError):
    code = ErrorCode.LOGIN_FAILED


class TooManyAttempts(BrokerError):
    code = ErrorCode.TOO_MANY_ATTEMPTS

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LoginExpired(BrokerError):
    code = ErrorCode.LOGIN_EXPIRED


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every fix needed, one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) to fix:\n{lines}")


# The codes a helper may send; the broker's own codes never come from it.
_BY_CODE: dict[ErrorCode, type[BrokerError]] = {
    cls.code: cls
    for cls in (
        BadRequest, UnsupportedVersion, BadIdentifier, UnknownImage, NotPermitted, NoSuchSession,
        NoSuchOverlay, Conflict, StoreFull, BackendFailure, HelperUnavailable, Busy, InternalError,
    )
}


def error_from_code(code: str, message: str) -> BrokerError:
    """Rebuild the error a helper reported; an unknown code becomes an internal error."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except (ValueError, KeyError):
        return InternalError(f"helper answered with an unknown error code {code!r}: {message}")
    return cls(message)
