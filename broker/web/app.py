"""The HTTP edge that iPXE talks to: routes, parsing, limits, and the one mapping of errors to answers.

Everything is parsed and size-checked here, then handed to `BootFlow`. Every failure answers with an
HTTP status that says what happened and a script that says it to the person at the screen; because iPXE
drops the body of an error answer, scripts fetch that message again from `/message.ipxe`.

Routes:
  GET  /boot.ipxe             the entry script (`?then=login` after a failure)
  GET  /login.ipxe            log in with HTTP Basic credentials (401 + challenge without them)
  POST /login.ipxe            log in with a form (username, password), for iPXE builds with `params`
  GET  /boot/<image>.ipxe     start a boot session with a token from the menu; the boot script
  GET  /boot/<image>/<link>/vmlinuz, .../initrd.img
                              a netroot script's kernel and initrd: those of the version the user's disk
                              is pinned to, behind a signed file link (in the path, which no log shows)
  GET  /message.ipxe          why this workstation's last request failed
  GET  /health                JSON: the broker and the helper's health
  GET  /metrics               Prometheus text: logins, ensure_session latency, the helper's gauges
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from ..shared.errors import BadRequest, BrokerError, ErrorCode, InternalError, TooManyAttempts
from ..shared.identifiers import loggable
from .boot import BootFlow, SessionHelper
from .pam_auth import MAX_PASSWORD_LENGTH
from .tokens import MAX_TOKEN_LENGTH

log = logging.getLogger(__name__)

FLOW = web.AppKey("flow", BootFlow)
HELPER = web.AppKey("helper", SessionHelper)

MAX_BODY_BYTES = 4096
# Limits on request lines and headers: keyword arguments of aiohttp's runner, passed by `serve`.
HANDLER_LIMITS: dict[str, Any] = {"max_line_size": 2048, "max_field_size": 4096, "max_headers": 32}
MAX_USER_LENGTH = 256  # longer than any valid name: a longer one is refused like a wrong password
REALM = 'Basic realm="bootbroker", charset="UTF-8"'

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.BAD_IDENTIFIER: 400,
    ErrorCode.LOGIN_FAILED: 401,
    ErrorCode.LOGIN_EXPIRED: 403,
    ErrorCode.NOT_PERMITTED: 403,
    ErrorCode.UNKNOWN_IMAGE: 404,
    ErrorCode.NO_SUCH_SESSION: 404,
    ErrorCode.NO_SUCH_OVERLAY: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_MANY_ATTEMPTS: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.BACKEND_FAILURE: 502,
    # No Retry-After with 503: iPXE would silently retry forever instead of showing the message.
    ErrorCode.HELPER_UNAVAILABLE: 503,
    ErrorCode.BUSY: 503,
    ErrorCode.STORE_FULL: 507,
}


def _script(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/plain", charset="utf-8",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


_FILE_LINK_PATH = re.compile(r"(/boot/[^/]*/)[^/]+(/[^/]*)")


def shown_path(request: web.BaseRequest) -> str:
    """The request's path for a log line: escaped, and without a file link's token (it is in the path)."""
    return loggable(_FILE_LINK_PATH.sub(r"\1...\2", request.path) if _FILE_LINK_PATH.fullmatch(request.path) else request.path)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become answers: status from the code, the screen's message as a script,
    the detail in the log (never a password or a secret: messages are built without them; request values
    in them, and the path here, are escaped with `loggable`)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except BrokerError as e:
        error = e
        log.warning("%s %s from %s: %s: %s", loggable(request.method), shown_path(request), _address(request),
                    e.code, e.message)
    except Exception:
        log.exception("%s %s from %s: unexpected failure", loggable(request.method), shown_path(request),
                      _address(request))
        error = InternalError("unexpected failure")
    headers = {}
    if error.code is ErrorCode.LOGIN_FAILED:
        headers["WWW-Authenticate"] = REALM
    if isinstance(error, TooManyAttempts):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return _script(request.app[FLOW].failure(error, _address(request)), HTTP_STATUS[error.code], headers)


def _refuse_query_password(request: web.Request) -> None:
    if any(key.lower() in ("password", "pass", "pw", "passwd") for key in request.query):
        raise BadRequest(
            "a password in the query string of a URL is refused: query strings end up in logs and histories; "
            "send it with HTTP Basic credentials or a POST form"
        )


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded or len(encoded) > 2 * (MAX_USER_LENGTH + MAX_PASSWORD_LENGTH):
        raise BadRequest("the Authorization header is not HTTP Basic credentials")
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except ValueError:
        # binascii.Error (not base64), UnicodeDecodeError (not UTF-8), and the plain ValueError b64decode
        # raises for non-ASCII text: aiohttp hands over raw header bytes >= 0x80 as surrogate escapes.
        raise BadRequest("the Basic credentials are not base64 of UTF-8 user:password") from None
    if not sep:
        raise BadRequest("the Basic credentials have no colon between user and password")
    return user, password


async def _form_credentials(request: web.Request) -> tuple[str, str]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest("log in with a form (application/x-www-form-urlencoded) of username and password")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        # Refused before reading: a client announcing gigabytes need not send them (aiohttp's own 413).
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length)
    try:
        # aiohttp bounds the head's time (the keep-alive timer, see edge.py), not the body's.
        async with asyncio.timeout(request.app[FLOW].broker.request_timeout):
            form = await request.post()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the request body did not arrive in time\n", headers={"Connection": "close"}) from None
    if set(form) - {"username", "password"} or len(form) != len(set(form)):
        # A field given twice is ambiguous (parsers differ on which one wins): refused, not guessed.
        raise BadRequest("the login form takes only the fields username and password, once each")
    user, password = form.get("username"), form.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        raise BadRequest("the login form needs the fields username and password")
    return user, password


async def entry(request: web.Request) -> web.Response:
    _refuse_query_password(request)
    return _script(request.app[FLOW].entry(after_failure=request.query.get("then") == "login"))


async def login(request: web.Request) -> web.Response:
    _refuse_query_password(request)
    flow = request.app[FLOW]
    if request.method == "POST":
        user, password = await _form_credentials(request)
    elif "Authorization" in request.headers:
        user, password = _basic_credentials(request.headers["Authorization"])
    else:
        # iPXE sends the credentials from the URL only when challenged.
        return _script(flow.message("Log in with your user name and password."), 401, {"WWW-Authenticate": REALM})
    if len(user) > MAX_USER_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
        raise BadRequest("the user name or password is longer than any valid one")
    return _script(await flow.login(user, password, _address(request)))


async def boot(request: web.Request) -> web.Response:
    _refuse_query_password(request)
    token = request.query.get("token", "")
    if not token or len(token) > MAX_TOKEN_LENGTH or set(request.query) != {"token"}:
        raise BadRequest("a boot link takes exactly one parameter, token, from the menu")
    return _script(await request.app[FLOW].boot(request.match_info["image"], token, _address(request)))


CHUNK = 256 * 1024  # read at a time where the file cannot be sent with sendfile (TLS)


async def boot_file(request: web.Request) -> web.StreamResponse:
    """A netroot script's kernel or initrd, streamed from the descriptor the helper sent (sendfile where
    the transport can, chunks of CHUNK bytes otherwise): never read whole into memory. The whole file,
    with its Content-Length; HEAD answers the headers only. Range is not offered (iPXE does not ask)."""
    if request.query:
        raise BadRequest("a boot file link takes no parameters")
    flow = request.app[FLOW]
    opened = await flow.boot_file(request.match_info["image"], request.match_info["link"],
                                  request.match_info["file"], _address(request))
    with os.fdopen(opened.fd, "rb") as file:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"})
        response.content_length = opened.size
        writer = await response.prepare(request)
        if request.method != "HEAD" and writer is not None:
            await _send_file(request, writer, file, opened.size)
            flow.metrics.boot_file_sent(opened.size)
        await response.write_eof()
    return response


async def _send_file(request: web.Request, writer: Any, file: IO[bytes], size: int) -> None:
    loop = asyncio.get_running_loop()
    if request.transport is None:
        raise ConnectionResetError("the workstation went away")
    await writer.drain()
    # asyncio cannot sendfile into a TLS transport (told not to fall back, it raises RuntimeError), so
    # over TLS, the broker's normal case, the chunks are chosen here rather than by catching that.
    if request.transport.get_extra_info("sslcontext") is None:
        try:
            await loop.sendfile(request.transport, file, 0, size, fallback=False)
            return
        except (NotImplementedError, asyncio.SendfileNotAvailableError):  # a loop or file without sendfile
            pass
    left = size
    while left > 0:
        chunk = await loop.run_in_executor(None, file.read, min(CHUNK, left))
        if not chunk:
            raise ConnectionResetError("the boot file ended early")
        await writer.write(chunk)
        left -= len(chunk)


async def message(request: web.Request) -> web.Response:
    return _script(request.app[FLOW].pending_message(_address(request)))


async def health(request: web.Request) -> web.Response:
    body: dict[str, Any] = {"broker": "ok"}
    try:
        body["helper"] = await request.app[HELPER].health()
    except BrokerError as e:
        body["helper"] = {"error": e.code.value, "message": e.message}
        return web.json_response(body, status=503)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    try:
        helper: dict[str, Any] | None = await request.app[HELPER].health()
    except BrokerError:
        helper = None  # bootbroker_helper_up 0
    text = request.app[FLOW].metrics.render(helper)
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-store"})


class AccessLogger(AbstractAccessLogger):
    """One line per request, without the query string (boot links carry tokens there) nor a file link's
    token (in its path); the method and the (percent-decoded) path escaped."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %.3fs', request.remote, loggable(request.method), shown_path(request),
            response.status, time,
        )


def make_app(flow: BootFlow, helper: SessionHelper) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[errors_middleware])
    app[FLOW] = flow
    app[HELPER] = helper
    app.router.add_get("/boot.ipxe", entry)
    app.router.add_get("/login.ipxe", login)
    app.router.add_post("/login.ipxe", login)
    app.router.add_get("/boot/{image}.ipxe", boot)
    app.router.add_get(r"/boot/{image}/{link}/{file:vmlinuz|initrd\.img}", boot_file)
    app.router.add_get("/message.ipxe", message)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app
