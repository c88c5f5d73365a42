"""Slow and greedy clients against the broker served for real (GuardedSite, as `serve` runs it): a
request head that trickles in is cut off at `request_timeout` while others are served; a slow but timely
head is served; a slow body gets 408; the TLS handshake is bounded; one address holds a bounded number of
connections. Deadlines are short here and margins generous: only behaviour is asserted, never speed."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from broker.web.tls import ensure_certificate, server_context
from tests import bad_requests
from tests.bad_requests import CLOSED

from .realserver import served
from .webfakes import broker_config

GOOD = b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n"
MARGIN = 15.0  # far longer than any deadline here: a slow machine must not fail these tests


def trickle(port: int, data: bytes, gap: float, source: str | None = None) -> tuple[int, bool]:
    """Send `data` a byte at a time, `gap` seconds apart; how many bytes went out before the server
    closed the connection, and whether it did (False: every byte went out and it stayed open)."""
    with socket.create_connection(("127.0.0.1", port), timeout=MARGIN, source_address=(source, 0) if source else None) as conn:
        sent = 0
        for byte in data:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return sent, True
            sent += 1
            conn.settimeout(gap)
            try:
                if conn.recv(1) == b"":
                    return sent, True
            except TimeoutError:
                pass
            except OSError:
                return sent, True
        return sent, False


def status(port: int, raw: bytes = GOOD, source: str | None = None) -> int | str:
    with socket.create_connection(("127.0.0.1", port), timeout=MARGIN, source_address=(source, 0) if source else None) as conn:
        return bad_requests.send(conn, raw, timeout=MARGIN)


async def test_a_trickling_head_is_cut_off_while_others_are_served() -> None:
    async with served(broker_config(request_timeout=1.0), {}) as s:
        endless = b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 2000
        trickler = asyncio.create_task(asyncio.to_thread(trickle, s.port, endless, 0.05))
        for _ in range(5):  # served meanwhile, on other connections
            assert await asyncio.to_thread(status, s.port) == 200
            await asyncio.sleep(0.1)
        sent, closed = await asyncio.wait_for(trickler, MARGIN)
        assert closed and sent < len(endless)
        assert await asyncio.to_thread(status, s.port) == 200


async def test_a_slow_head_within_the_deadline_is_served() -> None:
    async with served(broker_config(request_timeout=5.0), {}) as s:
        def slow_request() -> int | str:
            with socket.create_connection(("127.0.0.1", s.port), timeout=MARGIN) as conn:
                for piece in (b"GET /boot.ipxe HT", b"TP/1.1\r\nHo", b"st: x\r\n", b"X-A: b\r\n", b"\r\n"):
                    conn.sendall(piece)
                    time.sleep(0.2)
                return bad_requests.send(conn, b"", timeout=MARGIN)
        assert await asyncio.to_thread(slow_request) == 200


async def test_the_deadline_starts_again_after_each_answer_and_idle_connections_close() -> None:
    async with served(broker_config(request_timeout=1.0), {}) as s:
        def two_requests() -> tuple[int | str, int | str, int | str]:
            with socket.create_connection(("127.0.0.1", s.port), timeout=MARGIN) as conn:
                first = bad_requests.send(conn, GOOD, timeout=MARGIN)
                time.sleep(0.5)  # within the deadline after the first answer: still open
                second = bad_requests.send(conn, GOOD, timeout=MARGIN)
                idle = bad_requests.send(conn, b"", timeout=MARGIN)  # then nothing: closed
                return first, second, idle
        assert await asyncio.to_thread(two_requests) == (200, 200, CLOSED)


async def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    async with served(broker_config(request_timeout=1.0), {"alice": "x"}) as s:
        raw = bad_requests.post_form(b"username=alice", length=40)  # 14 of 40 bytes, then silence
        assert await asyncio.to_thread(status, s.port, raw) == 408
        assert s.authenticator.calls == []


async def test_one_address_holds_a_bounded_number_of_connections() -> None:
    async with served(broker_config(request_timeout=30.0, connections_per_address=3), {}) as s:
        held = [socket.create_connection(("127.0.0.1", s.port), timeout=MARGIN) for _ in range(3)]
        try:
            for _ in range(100):  # the server admits them asynchronously
                if s.cap.open("127.0.0.1") == 3:
                    break
                await asyncio.sleep(0.05)
            assert s.cap.open("127.0.0.1") == 3
            # The fourth is closed as it opens, long before the 30 s deadline; another address is served.
            assert await asyncio.to_thread(status, s.port) == CLOSED
            assert await asyncio.to_thread(status, s.port, GOOD, "127.0.0.2") == 200
            # The held ones still work, and once one goes, the address may open another.
            assert await asyncio.to_thread(bad_requests.send, held[0], GOOD, "127.0.0.1", MARGIN) == 200
            held.pop().close()
            for _ in range(100):
                if s.cap.open("127.0.0.1") == 2:
                    break
                await asyncio.sleep(0.05)
            assert await asyncio.to_thread(status, s.port) == 200
        finally:
            for conn in held:
                conn.close()
        for _ in range(100):
            if s.cap.open("127.0.0.1") == 0:
                break
            await asyncio.sleep(0.05)
        assert s.cap.open("127.0.0.1") == 0


async def test_the_tls_handshake_is_bounded(tmp_path: Path) -> None:
    cert = ensure_certificate(tmp_path / "tls" / "broker.crt", tmp_path / "tls" / "broker.key", ["boot.example.org"])
    async with served(broker_config(request_timeout=1.0), {}, ssl_context=server_context(cert)) as s:
        def silent() -> int | str:  # connects, never says hello
            with socket.create_connection(("127.0.0.1", s.port), timeout=MARGIN) as conn:
                return bad_requests.send(conn, b"", timeout=MARGIN)

        def half_hello() -> bool:  # the start of a ClientHello, then nothing
            with socket.create_connection(("127.0.0.1", s.port), timeout=MARGIN) as conn:
                conn.sendall(bytes.fromhex("16030100a5010000a10303") + bytes(20))
                try:
                    return conn.recv(1024) == b""
                except ConnectionResetError:
                    return True

        def good() -> int | str:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with socket.create_connection(("127.0.0.1", s.port), timeout=MARGIN) as raw:
                with context.wrap_socket(raw, server_hostname="boot.example.org") as conn:
                    return bad_requests.send(conn, GOOD, timeout=MARGIN)

        assert await asyncio.to_thread(silent) == CLOSED
        assert await asyncio.to_thread(half_hello)
        assert await asyncio.to_thread(good) == 200


def test_trickle_helper_sees_an_open_connection_as_open() -> None:
    """The helper itself: against a server that never closes, every byte goes out."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
    thread.start()
    try:
        assert trickle(server.getsockname()[1], b"abc", 0.01) == (3, False)
    finally:
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


async def test_a_malformed_request_is_one_line_in_the_log_not_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with served(broker_config(), {}) as s:
        assert await asyncio.to_thread(status, s.port, b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n") == 400
        assert await asyncio.to_thread(status, s.port) == 200
    refusals = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.INFO and refusals[0].exc_info is None
    assert "127.0.0.1" in refusals[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
