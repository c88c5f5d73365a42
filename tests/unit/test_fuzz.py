"""Property-based fuzzing (hypothesis) of every parser at the edge: each takes any input to a value or its
one clear refusal, never another exception, and round-trips what it should.

Modest by default so the unit suite stays fast; `HYPOTHESIS_PROFILE=long` runs 20,000 examples per
property (`HYPOTHESIS_EXAMPLES=N` for another count).
"""

from __future__ import annotations

import base64
import copy
import os
import re
import string
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker.shared.config import ConfigError, parse
from broker.shared.errors import BadIdentifier, BadRequest, InternalError, LoginExpired, UnsupportedVersion
from broker.shared.identifiers import USER_NAME, check_user_name, script_safe, user_label
from broker.shared.protocol import MAX_MESSAGE_BYTES, OPERATIONS, Request, decode_request, encode_request
from broker.web.scripts import MENU, MESSAGE, ScriptRenderer
from broker.web.tokens import TokenSigner
from broker.web.app import MAX_USER_LENGTH, _basic_credentials
from broker.web.pam_auth import MAX_PASSWORD_LENGTH

settings.register_profile("default", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "long", max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "20000")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

# --- the helper protocol ------------------------------------------------------------------------------


@given(st.binary(max_size=MAX_MESSAGE_BYTES + 64))
def test_decode_request_of_any_bytes(line: bytes) -> None:
    try:
        assert isinstance(decode_request(line), Request)
    except (BadRequest, UnsupportedVersion):
        pass


@given(st.one_of(
    json_values.map(lambda v: __import__("json").dumps(v).encode()),
    st.fixed_dictionaries({"v": json_values | st.just(1), "op": json_values | st.sampled_from(sorted(OPERATIONS)), "args": json_values})
    .map(lambda v: __import__("json").dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 1500).map(lambda n: b'{"v":1,"op":"health","args":' + b'{"a":' * n + b"1" + b"}" * (n + 1)),
))
def test_decode_request_of_json_shaped_bytes(line: bytes) -> None:
    try:
        assert isinstance(decode_request(line), Request)
    except (BadRequest, UnsupportedVersion):
        pass


@given(st.sampled_from(sorted(OPERATIONS)).flatmap(
    lambda op: st.tuples(st.just(op), st.fixed_dictionaries({name: json_values for name in OPERATIONS[op]}))
))
def test_encode_then_decode_request_round_trips(op_args: tuple[str, dict[str, Any]]) -> None:
    op, args = op_args
    line = encode_request(op, args)
    if len(line) > MAX_MESSAGE_BYTES:
        return
    assert decode_request(line.rstrip(b"\n")) == Request(op, args)


# --- HTTP Basic credentials -----------------------------------------------------------------------------


@given(st.text(max_size=3000) | st.text(max_size=40).map(lambda t: "Basic " + t)
       | st.binary(max_size=200).map(lambda b: "Basic " + b.decode("utf-8", "surrogateescape")))
def test_basic_credentials_of_any_header(header: str) -> None:
    try:
        user, password = _basic_credentials(header)
        assert isinstance(user, str) and isinstance(password, str)
    except BadRequest:
        pass


@given(st.text(max_size=MAX_USER_LENGTH).filter(lambda u: ":" not in u), st.text(max_size=MAX_PASSWORD_LENGTH // 4))
def test_basic_credentials_round_trip(user: str, password: str) -> None:
    header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    assume(len(header) - 6 <= 2 * (MAX_USER_LENGTH + MAX_PASSWORD_LENGTH))
    assert _basic_credentials(header) == (user, password)


# --- boot tokens ----------------------------------------------------------------------------------------

user_names = st.from_regex(USER_NAME, fullmatch=True)
image_names = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)


@given(st.text(max_size=600) | st.from_regex(r"[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,60}", fullmatch=True))
def test_any_string_as_a_token_is_a_clear_refusal(token: str) -> None:
    signer = TokenSigner(300, key=b"k" * 32)
    try:
        signer.verify(token, "demo", "192.0.2.7")
    except LoginExpired:
        return
    raise AssertionError(f"{token!r} verified")


@given(user_names, image_names, st.data())
def test_a_token_never_verifies_after_any_single_character_change(user: str, image: str, data: st.DataObject) -> None:
    signer = TokenSigner(300, key=b"k" * 32, clock=lambda: 1_000_000.0)
    token = signer.issue(user, image, "192.0.2.7")
    assert signer.verify(token, image, "192.0.2.7").user == user
    index = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_.") | st.characters())
    assume(char != token[index])
    forged = token[:index] + char + token[index + 1:]
    try:
        signer.verify(forged, image, "192.0.2.7")
    except LoginExpired:
        return
    raise AssertionError(f"{forged!r} verified (was {token!r})")


@given(user_names, image_names, st.integers(1, 10_000), st.floats(0, 20_000))
def test_a_token_expires_after_its_ttl_and_not_before(user: str, image: str, ttl: int, later: float) -> None:
    now = [1_000_000.0]
    signer = TokenSigner(ttl, key=b"k" * 32, clock=lambda: now[0])
    token = signer.issue(user, image, "192.0.2.7")
    now[0] += later
    try:
        signer.verify(token, image, "192.0.2.7")
        assert later <= ttl
    except LoginExpired:
        assert later > ttl


# --- identifiers ----------------------------------------------------------------------------------------

LABEL = re.compile(r"[a-z0-9.-]+")


@given(st.one_of(st.text(max_size=80), st.integers(), st.none(), st.floats(), st.lists(st.text(max_size=3), max_size=3)))
def test_check_user_name_of_anything(value: object) -> None:
    try:
        assert check_user_name(value) == value
    except BadIdentifier as e:
        assert "\n" not in e.message and len(e.message) < 300


@given(user_names)
def test_a_label_fits_an_iqn(user: str) -> None:
    label = user_label(user)
    assert LABEL.fullmatch(label) and not label.startswith((".", "-"))


@given(st.lists(user_names | user_names.map(str.lower) | user_names.map(lambda u: re.sub(r"[^a-z0-9.-]", "-", u.lower()) + "x"),
                min_size=2, max_size=30, unique=True))
def test_different_user_names_never_share_a_label(users: list[str]) -> None:
    users = [u for u in users if USER_NAME.fullmatch(u)]
    labels = [user_label(u) for u in users]
    assert len(set(labels)) == len(labels), dict(zip(users, labels))


@given(user_names)
def test_a_name_that_looks_like_a_hashed_label_cannot_take_anothers(user: str) -> None:
    label = user_label(user)
    if label != user and USER_NAME.fullmatch(label):
        assert user_label(label) != label  # the lookalike is hashed again, never left as it is


# --- iPXE scripts ---------------------------------------------------------------------------------------

RENDERER = ScriptRenderer()


def _menu(user: str, description: str) -> str:
    return RENDERER.render(MENU, {
        "user": user, "ttl": 300, "timeout_ms": 10000,
        "items": [{"key": "image-demo", "description": description, "url": "https://boot.example.org/boot/demo.ipxe?token=a.b"}],
        "message_url": "https://boot.example.org/message.ipxe", "entry_url": "https://boot.example.org/boot.ipxe",
    })


BASELINE_MENU = _menu("alice", "Demo disk")
BASELINE_MESSAGE = RENDERER.render(MESSAGE, {"message": "hello", "pause_ms": 8000, "retry_url": "https://boot.example.org/boot.ipxe"})


def _shape(script: str) -> tuple[int, int, int]:
    return script.count("\n"), script.count("${"), script.count("||")


@given(st.text(max_size=60), st.text(max_size=60))
def test_no_user_controlled_value_breaks_out_of_a_script(user: str, description: str) -> None:
    try:
        script = _menu(user, description)
    except InternalError:
        assert not (script_safe(user) and script_safe(description))
        return
    assert script_safe(user) and script_safe(description)
    assert _shape(script) == _shape(BASELINE_MENU)
    for value in (user, description):
        assert not any(c in value for c in "\r\n\x00$") and not re.search(r"[\x00-\x1f\x7f]", value)


@given(st.text(max_size=100))
def test_no_message_breaks_out_of_its_script(text: str) -> None:
    try:
        script = RENDERER.render(MESSAGE, {"message": text, "pause_ms": 8000, "retry_url": "https://boot.example.org/boot.ipxe"})
    except InternalError:
        return
    assert _shape(script) == _shape(BASELINE_MESSAGE)


# --- configuration ----------------------------------------------------------------------------------------

EXAMPLE = tomllib.loads((Path(__file__).parents[2] / "examples" / "lab.toml").read_text())
SECTIONS: dict[tuple[str, ...], list[str]] = {
    ("store",): ["path", "backend", "cow_percent", "backup_days", "min_free_percent", "fill_warn_percent",
                 "pool_percent"],
    ("helper",): ["socket", "broker_group", "helpdesk_group"],
    ("iscsi",): ["domain", "date", "portals", "advertise"],
    ("broker",): ["url", "insecure_http", "listen", "names", "certificate", "key", "pam_service", "pam_concurrency",
                  "token_ttl", "menu_timeout", "templates", "limits", "request_timeout", "connections_per_address"],
    ("broker", "limits"): ["user_failures", "address_failures", "window", "failure_delay"],
    ("images", "demo"): ["description", "users", "groups", "boot", "kernel", "initrd", "cmdline"],
    (): ["store", "helper", "iscsi", "broker", "images"],
}
toml_values = st.recursive(
    st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | st.datetimes() | st.dates(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


@given(st.lists(st.tuples(st.sampled_from(sorted(SECTIONS)), st.data()), min_size=1, max_size=4))
def test_any_configuration_is_a_config_or_a_config_error(changes: list[tuple[tuple[str, ...], st.DataObject]]) -> None:
    data = copy.deepcopy(EXAMPLE)
    for section, draw in changes:
        table: Any = data
        for key in section:
            if not isinstance(table, dict):
                break
            table = table.setdefault(key, {})
        if not isinstance(table, dict):
            continue
        key = draw.draw(st.sampled_from(SECTIONS[section]) | st.text(max_size=8))
        table[key] = draw.draw(toml_values)
    try:
        parse(data)
    except ConfigError as e:
        assert e.problems
