"""Bad requests for the helper's Unix socket, as plain data, and one function that sends a case and reads
the answer. Standard library only, independent of the fakes: tests/unit/test_helper_bad_input.py replays
it against the helper's server with stand-in operations, the VM lab against the real helper.

A case is raw bytes (one or more lines, or none) and what must come back: the error code of the reply, OK
for a control request, or CLOSED when no reply is possible (the server just closes). Every case in
`PROTOCOL_CASES` is refused before any operation runs, whatever the caller's role. `ARGUMENT_CASES` are
well-formed requests with arguments of the wrong type or shape: they pass the protocol and are refused by
the real helper's validation (broker/shared/identifiers.py) with bad_identifier, so they run no operation there
either; they need a caller allowed the operation (root, or the broker group for ensure_session).
`SILENT` (connect, send nothing) is closed after the helper's IDLE_TIMEOUT (30 s).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

OK = "ok"
CLOSED = "closed"
MAX_MESSAGE_BYTES = 4096  # broker/shared/protocol.py's limit, restated: this module imports nothing of the broker's


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    expect: str  # an error code, OK, or CLOSED


def line(message: object) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def request(op: object, args: object = None, v: object = 1) -> bytes:
    return line({"v": v, "op": op, "args": {} if args is None else args})


GOOD = Case("health", request("health"), OK)

PROTOCOL_CASES: list[Case] = [
    GOOD,
    Case("binary_garbage", bytes(range(1, 10)) + bytes(range(14, 256)) + b"\n", "bad_request"),
    Case("not_utf8", b'{"v":1,"op":"\xff\xfe"}\n', "bad_request"),
    Case("truncated_json", b'{"v":1,"op":"health","ar\n', "bad_request"),
    Case("empty_line", b"\n", "bad_request"),
    Case("json_array", b"[1,2,3]\n", "bad_request"),
    Case("json_string", b'"health"\n', "bad_request"),
    Case("json_null", b"null\n", "bad_request"),
    Case("deep_nesting_array", b"[" * 2000 + b"]" * 2000 + b"\n", "bad_request"),
    Case("deep_nesting_in_args", b'{"v":1,"op":"health","args":' + b'{"a":' * 600 + b"1" + b"}" * 600 + b"}\n", "bad_request"),
    Case("nesting_past_the_size_limit", b"[" * 100_000 + b"]" * 100_000 + b"\n", "bad_request"),
    Case("oversized_line", b'{"v":1,"op":"health","args":{},"x":"' + b"a" * (MAX_MESSAGE_BYTES * 4) + b'"}\n', "bad_request"),
    Case("oversized_without_newline", b"a" * (MAX_MESSAGE_BYTES * 2), "bad_request"),
    Case("nan", b'{"v":1,"op":"retire","args":{"image":"demo","version":NaN}}\n', "bad_request"),
    Case("infinity_version", b'{"v":Infinity,"op":"health","args":{}}\n', "bad_request"),
    Case("version_missing", line({"op": "health", "args": {}}), "unsupported_version"),
    Case("version_2", request("health", v=2), "unsupported_version"),
    Case("version_0", request("health", v=0), "unsupported_version"),
    Case("version_string", request("health", v="1"), "unsupported_version"),
    Case("version_true", request("health", v=True), "unsupported_version"),
    Case("version_float", request("health", v=1.0), "unsupported_version"),
    Case("version_huge", b'{"v":' + b"9" * 3000 + b',"op":"health","args":{}}\n', "unsupported_version"),
    Case("unknown_operation", request("format_disk"), "bad_request"),
    Case("operation_by_python_name", request("__init__"), "bad_request"),
    Case("operation_not_a_string", request(["health"]), "bad_request"),
    Case("operation_null", request(None), "bad_request"),
    Case("operation_missing", line({"v": 1, "args": {}}), "bad_request"),
    Case("unknown_field", line({"v": 1, "op": "health", "args": {}, "sudo": True}), "bad_request"),
    Case("args_a_list", request("health", ["x"]), "bad_request"),
    Case("args_null", line({"v": 1, "op": "health", "args": None}), "bad_request"),
    Case("unknown_argument", request("health", {"path": "/etc/shadow"}), "bad_request"),
    Case("missing_argument", request("ensure_session", {"image": "demo"}), "bad_request"),
    Case("extra_argument", request("ensure_session", {"image": "demo", "user": "alice", "force": True}), "bad_request"),
    # Several requests, one connection: each is answered, the bad one does not end the conversation.
    Case("bad_then_good_on_one_connection", b"garbage\n" + request("health"), OK),
    # A last request without a newline, then the end of the stream: answered like a whole line.
    Case("last_line_without_newline", request("health").rstrip(b"\n"), OK),
]

# Refused by the real helper's validation (broker/shared/identifiers.py) after the protocol: bad_identifier.
_BAD_NAMES: list[object] = [
    None, 7, -1, 2**80, 1.5, True, [], ["demo"], {}, {"a": 1}, "", " ", "a" * 65, "../etc", "demo/x", "al\u0000ice",
    "\u00e5lice", "alice\n", "${x}", "-alice", ".alice",
]
ARGUMENT_CASES: list[Case] = [
    *(Case(f"ensure_session_user_{i}", request("ensure_session", {"image": "demo", "user": value}), "bad_identifier")
      for i, value in enumerate(_BAD_NAMES)),
    *(Case(f"ensure_session_image_{i}", request("ensure_session", {"image": value, "user": "alice"}), "bad_identifier")
      for i, value in enumerate(_BAD_NAMES)),
    *(Case(f"retire_version_{i}", request("retire", {"image": "demo", "version": value}), "bad_identifier")
      for i, value in enumerate([0, -1, 1.0, 1.5, "1", True, 10**10, 2**80, [], {}])),
    *(Case(f"set_current_version_{i}", request("set_current", {"image": "demo", "version": value}), "bad_identifier")
      for i, value in enumerate([None, 0, -1, 1.5, "1", True, 10**10])),
    *(Case(f"restore_backup_{i}", request("restore", {"image": "demo", "user": "alice", "backup": value}), "bad_identifier")
      for i, value in enumerate([7, "", "latest", "../x", "20261123T083000/..", ["20261123T083000"]])),
]

SILENT = Case("silent_connection", b"", CLOSED)


def send(sock: socket.socket, raw: bytes, timeout: float = 10.0) -> str:
    """Send `raw` on a connected Unix socket, end the stream, and return what the LAST reply says: its
    error code, OK, or CLOSED when the server closed without a reply."""
    sock.settimeout(timeout)
    try:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server refused mid-way (a line over the limit): read its reply
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    lines = data.splitlines()
    if not lines:
        return CLOSED
    reply = json.loads(lines[-1])
    return OK if reply.get("ok") else str(reply["error"]["code"])


def check(case: Case, path: str, timeout: float = 10.0) -> tuple[bool, str]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        got = send(sock, case.raw, timeout)
    return got == case.expect, got
