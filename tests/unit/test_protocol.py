import json

import pytest

from broker.shared.errors import BadRequest, ErrorCode, NotPermitted, UnsupportedVersion, error_from_code
from broker.shared.protocol import MAX_MESSAGE_BYTES, decode_request, encode_error, encode_request


def test_round_trip() -> None:
    request = decode_request(encode_request("ensure_session", {"image": "demo", "user": "alice"}))
    assert request.op == "ensure_session"
    assert request.args == {"image": "demo", "user": "alice"}


@pytest.mark.parametrize(
    "line, match",
    [
        (b"not json", "not one line of JSON"),
        (b"\xff\xfe", "not one line of JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"v": 1, "op": "format_disk", "args": {}}', "unknown operation"),
        (b'{"v": 1, "op": "__init__", "args": {}}', "unknown operation"),
        (b'{"v": 1, "op": "sessions", "args": []}', "args must be"),
        (b'{"v": 1, "op": "ensure_session", "args": {"image": "demo"}}', "takes arguments"),
        (b'{"v": 1, "op": "ensure_session", "args": {"image": "d", "user": "u", "path": "/"}}', "takes arguments"),
        (b'{"v": 1, "op": "sessions", "args": {}, "extra": 1}', "unknown request fields"),
        (b"x" * (MAX_MESSAGE_BYTES + 1), "longer than"),
    ],
)
def test_malformed_requests_are_refused(line: bytes, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        decode_request(line)


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_other_versions_are_refused(version: object) -> None:
    with pytest.raises(UnsupportedVersion):
        decode_request(json.dumps({"v": version, "op": "health", "args": {}}).encode())


def test_errors_cross_the_wire_with_their_code() -> None:
    reply = json.loads(encode_error(NotPermitted("no")))
    assert reply == {"v": 1, "ok": False, "error": {"code": "not_permitted", "message": "no"}}
    rebuilt = error_from_code(reply["error"]["code"], reply["error"]["message"])
    assert isinstance(rebuilt, NotPermitted)
    assert error_from_code("made_up", "x").code is ErrorCode.INTERNAL
