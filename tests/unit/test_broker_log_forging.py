"""No request value reaches a log line unescaped (issue 15): the percent-decoded path, a typed user name and
whatever else a client sends are escaped and bounded before they are logged, in the app log and the access
log, so a request cannot write a line of its own or a terminal's escape codes into the log."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.web.boot import BootFlow
from broker.shared.identifiers import loggable
from broker.web.limiter import LoginLimiter
from broker.web.scripts import ScriptRenderer
from broker.web.tokens import TokenSigner
from broker.web.app import HANDLER_LIMITS, AccessLogger, make_app

from .realserver import served
from .webfakes import FakeAuthenticator, FakeDirectory, FakeHelper, broker_config

FORGED = "\nFAKE 2026-12-02 root logged in\x1b[2J\r\u2028\x00"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    config = broker_config()
    assert config.broker is not None
    helper = FakeHelper()
    flow = BootFlow(config, config.broker, FakeAuthenticator({"alice": "wonderland"}), helper, FakeDirectory({}),
                    ScriptRenderer(), TokenSigner(config.broker.token_ttl), LoginLimiter(config.broker.limits))
    server = TestServer(make_app(flow, helper))
    await server.start_server(access_log_class=AccessLogger, **HANDLER_LIMITS)
    result: TestClient = await aiohttp_client(server)
    return result


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def assert_no_forged_line(records: list[logging.LogRecord]) -> None:
    assert records
    for record in records:
        message = record.getMessage()
        for bad in ("\n", "\r", "\x1b", "\u2028", "\x00"):
            assert bad not in message, (record.name, message)
        assert len(message) < 1000, (record.name, message)


async def test_a_forged_path_is_escaped_in_the_app_log_and_the_access_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for path in ("/boot/x%0aFAKE%1b[2J.ipxe", "/boot/x%0d%0aFAKE%e2%80%a8.ipxe?token=abc",
                 "/nope%0aFAKE%1b[2J", "/boot/" + "x%0a" * 300 + ".ipxe"):
        response = await client.get(path)
        assert response.status in (400, 404)
    assert_no_forged_line(caplog.records)
    logged = caplog.text
    assert "/boot/x\\nFAKE\\x1b[2J.ipxe" in logged  # still readable, escaped
    assert any(r.name == "aiohttp.access" for r in caplog.records)
    assert any(r.name == "broker.web.app" for r in caplog.records)


async def test_a_forged_user_name_is_escaped_in_the_log(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for user in (f"alice{FORGED}", FORGED * 5):
        response = await client.post("/login.ipxe", data={"username": user, "password": "x"})
        assert response.status == 401
    response = await client.get("/login.ipxe", headers=basic(f"bob{FORGED}", "x"))
    assert response.status == 401
    assert_no_forged_line(caplog.records)


def send_raw(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(raw)
        return connection.recv(64)


async def test_a_request_the_parser_refuses_is_one_escaped_line(caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's own message for it spans lines and quotes the request's bytes."""
    caplog.set_level(logging.INFO)
    async with served(broker_config(), {"alice": "wonderland"}) as s:
        for raw in (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x1b[2J\x01\nFAKE\r\n\r\n",
                    b"GET /\x1b[2J\nFAKE HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nX\x1b: y\r\n\r\n"):
            assert (await asyncio.to_thread(send_raw, s.port, raw)).split(b" ")[1] == b"400"
    edge = [r for r in caplog.records if r.name == "broker.web.edge"]
    assert len(edge) == 3
    assert_no_forged_line(edge)


def test_loggable_escapes_and_bounds() -> None:
    assert loggable("alice") == "alice"
    assert loggable("a\nb\x1b[2J\\n\"") == 'a\\nb\\x1b[2J\\\\n\\"'  # a typed backslash cannot pass for an escape
    assert loggable("å\u2028") == "\\xe5\\u2028"
    assert loggable("x" * 1000, limit=10) == "x" * 10 + "..."
    assert loggable("\udcff") == "\\udcff"  # aiohttp's surrogate escapes of raw bytes
