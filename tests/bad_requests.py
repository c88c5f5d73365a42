"""Bad HTTP requests for the broker, as plain data, and one function that sends a case and reads the status.

Standard library only, and independent of the test fakes: tests/unit/test_bad_requests.py replays this
corpus against the broker app with fake ports, and the VM lab replays it against the real broker, helper
and LIO (plain HTTP to 127.0.0.1:PORT). Every case is refused before PAM and before the helper: a replay
checks that neither was asked (PAM's log, the helper's sessions).

Each case is raw bytes with `{host}` where the Host header's value goes, and the status the broker must
answer, or CLOSED when it must drop the connection (nothing to answer yet: then only after the broker's
`request_timeout`, so give `send` a timeout longer than that). Where aiohttp's parser refuses a request
(sizes, syntax) the status is aiohttp's own: 400 for every malformed or oversized head (it sends no 431),
413 for a body over the limit. The broker's own choices are the README's table: 400 bad request, 401 login
failed, 403 forged or foreign boot link, 404 unknown path or image, 405 method, 408 body too slow, 413.

Cases marked `failed_login` are counted by the broker's login limiter as a failure of their address: after
`address_failures` of them (30 by default) in `window` the answer is 429 instead of 401, still without PAM.
Pass `limited_ok=True` to `check` when replaying against a broker whose limits you do not control.

Token cases need a real boot link: log in first, take one link from the menu
(`/boot/IMAGE.ipxe?token=...`) and call `token_cases(link, other_image)`. An expired link is not in the
corpus (it needs `token_ttl` seconds of waiting, or a clock: tests/unit/test_web.py has it).
A `from_other_address` case must be sent from another source address than the login's (bind the socket
to 127.0.0.2: Linux routes all of 127/8 on lo).
"""

from __future__ import annotations

import base64
import select
import socket
import string
import urllib.parse
from dataclasses import dataclass
from typing import Protocol

CLOSED = "closed"
TIMEOUT = "timeout"  # neither an answer nor a close within the timeout: always a failure


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes  # with b"{host}" for the Host header's value
    expect: int | str  # an HTTP status, or CLOSED
    failed_login: bool = False  # counts as a failed login of its address (429 once over the limit)
    from_other_address: bool = False  # send from another source address than the login's


class Connection(Protocol):
    """What `send` needs of a socket (a plain or TLS-wrapped socket.socket has it)."""

    def settimeout(self, value: float | None) -> None: ...
    def sendall(self, data: bytes) -> None: ...
    def recv(self, size: int) -> bytes: ...
    def fileno(self) -> int: ...


FORM = "application/x-www-form-urlencoded"


def get(path: str, *headers: str) -> bytes:
    return _head(f"GET {path} HTTP/1.1", headers)


def _head(line: str, headers: tuple[str, ...]) -> bytes:
    return "\r\n".join([line, "Host: {host}", *headers, "", ""]).encode("utf-8", "surrogateescape")


def basic(userpass: bytes) -> str:
    return "Authorization: Basic " + base64.b64encode(userpass).decode()


def login_basic(userpass: bytes) -> bytes:
    return get("/login.ipxe", basic(userpass))


def post_form(body: bytes, content_type: str = FORM, length: int | None = None) -> bytes:
    head = _head("POST /login.ipxe HTTP/1.1", (f"Content-Type: {content_type}", f"Content-Length: {len(body) if length is None else length}"))
    return head + body


def form(username: str, password: str = "secret") -> bytes:
    return urllib.parse.urlencode({"username": username, "password": password}).encode()


CASES: list[Case] = [
    # A control: the corpus is only meaningful if a good request is served.
    Case("good_entry_script", get("/boot.ipxe"), 200),
    # Sizes of the head (aiohttp's parser, limits in web.HANDLER_LIMITS): 400, connection closed.
    Case("request_line_too_long", get("/boot.ipxe?x=" + "a" * 3000), 400),
    Case("path_too_long", get("/" + "a" * 3000), 400),
    Case("header_value_too_long", get("/boot.ipxe", "X-Junk: " + "a" * 5000), 400),
    Case("authorization_header_too_long", get("/login.ipxe", "Authorization: Basic " + "QUFB" * 1300), 400),
    Case("too_many_headers", get("/boot.ipxe", *(f"X-H{i}: y" for i in range(40))), 400),
    # Bodies (limit 4 KiB; aiohttp's cap of form fields is 1000).
    Case("body_too_large", post_form(b"username=a&password=" + b"x" * 5000), 413),
    Case("body_announced_huge_never_sent", post_form(b"", length=10**12), 413),
    Case("chunked_body_too_large", _head("POST /login.ipxe HTTP/1.1", (f"Content-Type: {FORM}", "Transfer-Encoding: chunked"))
         + b"2000\r\n" + b"x" * 0x2000 + b"\r\n0\r\n\r\n", 413),
    Case("expect_100_continue_too_large", _head("POST /login.ipxe HTTP/1.1", (f"Content-Type: {FORM}", "Expect: 100-continue", "Content-Length: 100000")), 413),
    Case("form_with_thousands_of_fields", post_form(b"a=&" * 1333), 413),
    Case("form_with_extra_fields", post_form(form("alice") + b"&" + b"&".join(b"f%d=1" % i for i in range(100))), 400),
    Case("form_field_twice", post_form(b"username=alice&username=bob&password=x"), 400),
    Case("form_without_password", post_form(b"username=alice"), 400),
    Case("form_as_json", post_form(b'{"username": "alice", "password": "x"}', content_type="application/json"), 400),
    Case("form_user_name_too_long", post_form(form("a" * 300)), 400),
    # Broken Basic credentials: 400 with the reason, before PAM.
    Case("basic_not_base64", get("/login.ipxe", "Authorization: Basic !!!notbase64!!!"), 400),
    Case("basic_no_colon", login_basic(b"alicewonderland"), 400),
    Case("basic_not_utf8", login_basic(b"\xff\xfe:x"), 400),
    Case("basic_raw_bytes_not_ascii", get("/login.ipxe", "Authorization: Basic \udcff\udcfe\udc80"), 400),
    Case("basic_empty", get("/login.ipxe", "Authorization: Basic "), 400),
    Case("basic_scheme_only", get("/login.ipxe", "Authorization: Basic"), 400),
    Case("authorization_other_scheme", get("/login.ipxe", "Authorization: Bearer abc"), 400),
    Case("basic_huge_within_field_limit", get("/login.ipxe", "Authorization: Basic " + "QUFB" * 700), 400),
    Case("basic_user_name_too_long", login_basic(b"a" * 300 + b":x"), 400),
    Case("basic_password_too_long", login_basic(b"alice:" + b"x" * 600), 400),
    # User names no site can have: answered like a wrong password (401), never shown to PAM.
    *(Case(f"basic_user_{label}", login_basic(user.encode() + b":secret"), 401, failed_login=True) for label, user in (
        ("nul", "al\0ice"), ("unicode", "\u00e5lice"), ("rtl_override", "\u202ealice"), ("escape_sequence", "\x1b[2J"),
        ("newline_command", "alice\nshell"), ("ipxe_expansion", "${password}"), ("empty", ""), ("space", "alice smith"),
        ("shell", "$(reboot)"), ("percent", "%00"),
    )),
    *(Case(f"form_user_{label}", post_form(form(user)), 401, failed_login=True) for label, user in (
        ("nul", "al\0ice"), ("unicode", "\u00e9"), ("newline_command", "a\n#!ipxe\nshell"), ("ipxe_expansion", "${x}"),
        ("empty", ""),
    )),
    Case("form_user_not_utf8", post_form(b"username=%FF%FE&password=x"), 401, failed_login=True),
    # Query strings.
    Case("password_in_query", get("/login.ipxe?username=alice&password=x"), 400),
    Case("huge_query_on_the_entry_is_ignored", get("/boot.ipxe?" + "a=1&" * 400), 200),
    Case("boot_link_with_many_parameters", get("/boot/demo.ipxe?" + "a=1&" * 400 + "token=x"), 400),
    Case("boot_link_without_token", get("/boot/demo.ipxe"), 400),
    Case("boot_link_token_too_long", get("/boot/demo.ipxe?token=" + "a" * 600), 400),
    Case("boot_link_token_garbage", get("/boot/demo.ipxe?token=%00%01garbage"), 403),
    Case("boot_link_token_forged_shape", get("/boot/demo.ipxe?token=eyJ1IjoiYWxpY2UifQ.AAAA"), 403),
    Case("boot_link_unknown_image", get("/boot/nosuch.ipxe?token=a.b"), 404),
    Case("boot_link_invalid_image_name", get("/boot/..%2F..%2Fetc.ipxe?token=a.b"), 404),
    # Methods and paths.
    Case("delete", _head("DELETE /boot.ipxe HTTP/1.1", ()), 405),
    Case("put_login", _head("PUT /login.ipxe HTTP/1.1", ("Content-Length: 0",)), 405),
    Case("trace", _head("TRACE /boot.ipxe HTTP/1.1", ()), 405),
    Case("unknown_method", _head("BREW /boot.ipxe HTTP/1.1", ()), 400),
    Case("connect", _head("CONNECT evil.example:443 HTTP/1.1", ()), 404),
    Case("options_star", _head("OPTIONS * HTTP/1.1", ()), 404),
    Case("unknown_path", get("/etc/passwd"), 404),
    Case("dot_dot_path", get("/../../etc/passwd"), 404),
    # Syntax (aiohttp's parser: 400).
    Case("nul_in_path", b"GET /boot\0.ipxe HTTP/1.1\r\nHost: {host}\r\n\r\n", 400),
    Case("control_character_in_header", get("/boot.ipxe", "X-Junk: a\x01b"), 400),
    Case("bare_cr_in_header", b"GET /boot.ipxe HTTP/1.1\r\nHost: {host}\rX: y\r\n\r\n", 400),
    Case("lf_line_endings", b"GET /boot.ipxe HTTP/1.1\nHost: {host}\n\n", 400),
    Case("no_host_in_http_1_1", b"GET /boot.ipxe HTTP/1.1\r\n\r\n", 400),
    Case("http_version_9_9", b"GET /boot.ipxe HTTP/9.9\r\nHost: {host}\r\n\r\n", 400),
    Case("content_length_and_chunked", _head("POST /login.ipxe HTTP/1.1", ("Content-Length: 3", "Transfer-Encoding: chunked")) + b"0\r\n\r\n", 400),
    Case("negative_content_length", _head("POST /login.ipxe HTTP/1.1", ("Content-Length: -1",)), 400),
    Case("http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    Case("tls_client_hello_on_plain_http", bytes.fromhex("16030100a5010000a10303") + bytes(100), 400),
    Case("binary_garbage", bytes(range(256)) + b"\r\n\r\n", 400),
    # HTTP/0.9-style: aiohttp takes a request line without a version as HTTP/0.9 and answers it; the
    # entry script is public, so that is harmless (and no other route is reachable without headers).
    Case("http_0_9_style_request_line", b"GET /boot.ipxe\r\n\r\n", 200),
    # Nothing that completes a request head: dropped after request_timeout.
    Case("silent_connection", b"", CLOSED),
    Case("only_empty_lines", b"\r\n\r\n", CLOSED),
    Case("unfinished_head", b"GET /boot.ipxe HTTP/1.1\r\nHost: {host}\r\n", CLOSED),
]


def _one_character_changed(text: str) -> str:
    """`text` with its middle character replaced by another base64url character."""
    i = len(text) // 2
    alphabet = string.ascii_letters + string.digits + "-_"
    return text[:i] + next(c for c in alphabet if c != text[i]) + text[i + 1:]


def token_cases(link: str, other_image: str) -> list[Case]:
    """Cases from a real boot link of a menu (`/boot/IMAGE.ipxe?token=PAYLOAD.MAC`): each a forgery or a
    misuse of it, answered 403 ("your login has expired") without asking the helper."""
    path, _, token = link.partition("?token=")
    payload, _, mac = token.partition(".")
    image_path = f"/boot/{other_image}.ipxe"
    return [
        Case("token_mac_changed", get(f"{path}?token={payload}.{_one_character_changed(mac)}"), 403),
        Case("token_payload_changed", get(f"{path}?token={_one_character_changed(payload)}.{mac}"), 403),
        Case("token_truncated", get(f"{path}?token={token[:-4]}"), 403),
        Case("token_without_mac", get(f"{path}?token={payload}"), 403),
        Case("token_mac_of_nothing", get(f"{path}?token=.{mac}"), 403),
        Case("token_for_another_image", get(f"{image_path}?token={token}"), 403),
        Case("token_with_a_nul", get(f"{path}?token={payload}%00.{mac}"), 403),
        Case("token_from_another_address", get(f"{path}?token={token}"), 403, from_other_address=True),
    ]


def send(conn: Connection, raw: bytes, host: str = "127.0.0.1", timeout: float = 15.0) -> int | str:
    """Send one request (raw, `{host}` filled in) and return the final status of the answer (1xx skipped),
    CLOSED if the server closed the connection without one, or TIMEOUT.

    The request goes out in pieces and sending stops as soon as the server answers, so a refusal of a
    large body is read rather than lost to a reset."""
    data = raw.replace(b"{host}", host.encode())
    conn.settimeout(timeout)
    try:
        for start in range(0, len(data), 16384):
            # Not before the first piece: over TLS 1.3 the server's session tickets make the socket
            # readable before any answer (bodies larger than one piece are for plain HTTP only).
            if start and select.select([conn], [], [], 0)[0]:
                break
            conn.sendall(data[start:start + 16384])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server has answered or closed: read what it said
    buffer = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            buffer += chunk
            status = _final_status(buffer)
            if status is not None:
                return status
    except TimeoutError:
        return _final_status(buffer) or TIMEOUT
    except ConnectionResetError:
        pass
    return _final_status(buffer) or CLOSED


def _final_status(buffer: bytes) -> int | None:
    while b"\r\n\r\n" in buffer:
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) < 2 or not parts[1].isdigit():
            return None
        status = int(parts[1])
        if status >= 200:
            return status
    return None


def check(case: Case, port: int, host: str = "127.0.0.1", timeout: float = 15.0, limited_ok: bool = False,
          source: str | None = None) -> tuple[bool, int | str]:
    """Send one case on a fresh connection to host:port; whether the answer is the expected one, and it.
    `source` binds the connection's source address (for `from_other_address` cases)."""
    with socket.create_connection((host, port), timeout=timeout, source_address=(source, 0) if source else None) as conn:
        got = send(conn, case.raw, host, timeout)
    return got == case.expect or (limited_ok and case.failed_login and got == 429), got
