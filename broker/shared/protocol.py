"""The helper protocol: JSON lines over a Unix socket, versioned, with a size limit per message.

A request is `{"v": 1, "op": NAME, "args": {...}}`; a reply is `{"v": 1, "ok": true, "result": ...}` or
`{"v": 1, "ok": false, "error": {"code": CODE, "message": TEXT}}` with CODE from `ErrorCode`.
Operation names and argument names are a closed set; arguments are validated by the helper, not here.

The operations in `FILE_OPERATIONS` answer with an open file: a successful reply line
(`"result": {"size": N}`) is sent in one `sendmsg` with the file's descriptor in its SCM_RIGHTS ancillary
data, so the broker reads a file of the store it has no permission to open (a version's kernel and initrd,
for netroot) and nothing else of it. An error reply carries no descriptor.

Additions that an older peer can ignore keep version 1: a new operation (an older helper answers
`bad_request`, "unknown operation"), a new field in a result (readers ignore fields they do not know and
treat a missing one as its old meaning: `ensure_session`'s `version` and `boot_files`, added with
`boot_file`, read as "no boot files"). A change that would mislead an older peer takes version 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest, BrokerError, UnsupportedVersion

VERSION = 1
MAX_MESSAGE_BYTES = 4096
# Replies may list many sessions; requests stay small.
MAX_REPLY_BYTES = 16 * 1024 * 1024

OPERATIONS: dict[str, frozenset[str]] = {
    "ensure_session": frozenset({"image", "user"}),
    "end_session": frozenset({"image", "user"}),
    "reset": frozenset({"image", "user"}),
    "sessions": frozenset(),
    "health": frozenset(),
    "publish": frozenset({"image", "source"}),
    "publish_overlay": frozenset({"image", "from_image", "user"}),
    "images": frozenset(),
    "published": frozenset(),
    "retire": frozenset({"image", "version"}),  # version null: every version
    "restore": frozenset({"image", "user", "backup"}),  # backup null: the newest
    "backups": frozenset(),
    "rebase": frozenset({"image", "user"}),
    "set_current": frozenset({"image", "version"}),
    "boot_file": frozenset({"image", "version", "name"}),  # name: vmlinuz or initrd.img
}
FILE_OPERATIONS = frozenset({"boot_file"})


@dataclass(frozen=True)
class OpenFile:
    """What a file operation answers: a read-only descriptor (the receiver closes it) and its size."""

    fd: int
    size: int


@dataclass(frozen=True)
class Request:
    op: str
    args: dict[str, Any]


def encode_request(op: str, args: dict[str, Any]) -> bytes:
    return _line({"v": VERSION, "op": op, "args": args})


def decode_request(line: bytes) -> Request:
    """Parse one request line; any defect raises BadRequest or UnsupportedVersion."""
    if len(line) > MAX_MESSAGE_BYTES:
        raise BadRequest(f"request longer than {MAX_MESSAGE_BYTES} bytes")
    try:
        message = json.loads(line, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("request is not one line of JSON") from None
    except RecursionError:
        # [[[[...: json's decoder recurses per level; 4 KiB nest deeper than Python's recursion limit.
        raise BadRequest("request nests too deeply") from None
    if not isinstance(message, dict):
        raise BadRequest("request must be a JSON object")
    if type(message.get("v")) is not int or message["v"] != VERSION:  # not true, not 1.0
        shown = repr(message.get("v"))
        raise UnsupportedVersion(
            f"protocol version {shown if len(shown) <= 20 else shown[:20] + '...'} not supported; this helper speaks {VERSION}"
        )
    op, args = message.get("op"), message.get("args", {})
    if set(message) - {"v", "op", "args"}:
        raise BadRequest(f"unknown request fields: {', '.join(sorted(set(message) - {'v', 'op', 'args'}))}")
    if not isinstance(op, str) or op not in OPERATIONS:
        raise BadRequest(f"unknown operation; known: {', '.join(sorted(OPERATIONS))}")
    if not isinstance(args, dict):
        raise BadRequest("args must be a JSON object")
    expected = OPERATIONS[op]
    if set(args) != expected:
        raise BadRequest(f"{op} takes arguments {sorted(expected)}, got {sorted(args)}")
    return Request(op, args)


def _no_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity, which JSON does not have.
    raise BadRequest(f"request has {name}, which is not JSON")


def encode_result(result: Any) -> bytes:
    return _line({"v": VERSION, "ok": True, "result": result})


def encode_error(error: BrokerError) -> bytes:
    return _line({"v": VERSION, "ok": False, "error": {"code": error.code.value, "message": error.message}})


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"
