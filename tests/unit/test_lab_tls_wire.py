"""lab/tls_wire.py reads the handshake the lab's TLS test relies on; here from a pcap built by hand."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lab import tls_wire

SERVER_PORT, CLIENT_PORT = 8443, 40000


def frame(source: int, destination: int, seq: int, payload: bytes) -> bytes:
    tcp = struct.pack(">HHIIBBHHH", source, destination, seq, 0, 5 << 4, 0x18, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0, bytes(4), bytes(4))
    return bytes(6) * 2 + b"\x08\x00" + ip + tcp + payload


def record(kind: int, body: bytes) -> bytes:
    return struct.pack(">BHH", kind, 0x0303, len(body)) + body


def handshake(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for data in frames:
        out += struct.pack("<IIII", 0, 0, len(data), len(data)) + data
    return out


def test_reads_offer_choice_and_how_far_each_side_went(tmp_path: Path) -> None:
    hello = handshake(1, b"\x03\x03" + bytes(32) + b"\x00" + struct.pack(">HHH", 4, 0xC030, 0x003C) + b"\x01\x00")
    server_hello = handshake(2, b"\x03\x03" + bytes(32) + b"\x00" + struct.pack(">H", 0xC030) + b"\x00")
    server_flight = record(22, server_hello + handshake(11, b"cert") + handshake(14, b""))
    capture = tmp_path / "net.pcap"
    capture.write_bytes(pcap([
        frame(CLIENT_PORT, SERVER_PORT, 1000, record(22, hello)),
        # the server's flight in two segments, the second also retransmitted, and out of order
        frame(SERVER_PORT, CLIENT_PORT, 5010, server_flight[10:]),
        frame(SERVER_PORT, CLIENT_PORT, 5000, server_flight[:10]),
        frame(SERVER_PORT, CLIENT_PORT, 5010, server_flight[10:]),
        frame(CLIENT_PORT, SERVER_PORT, 1000 + 5 + len(hello), record(21, b"\x02\x30")),  # unknown_ca
    ]))
    read = tls_wire.read(capture, SERVER_PORT)
    assert read.offered == [0xC030, 0x003C]
    assert (read.version, read.suite_name) == (0x0303, "ECDHE-RSA-AES256-GCM-SHA384")
    assert read.server.handshakes == ["ServerHello", "Certificate", "ServerHelloDone"]
    assert read.client.handshakes == ["ClientHello"] and read.client.alerts == [(2, 0x30)]
    assert not read.client.encrypted and not read.server.encrypted


def test_refuses_what_is_not_a_pcap(tmp_path: Path) -> None:
    capture = tmp_path / "x.pcap"
    capture.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))  # pcapng
    with pytest.raises(ValueError, match="not a little-endian pcap"):
        tls_wire.read(capture, SERVER_PORT)


def test_reads_every_connection_and_tells_a_resumed_session_from_a_full_handshake(tmp_path: Path) -> None:
    def hello(session: bytes) -> bytes:
        return handshake(1, b"\x03\x03" + bytes(32) + bytes([len(session)]) + session
                         + struct.pack(">HH", 2, 0xC02F) + b"\x01\x00")

    def server_hello(session: bytes) -> bytes:
        return handshake(2, b"\x03\x03" + bytes(32) + bytes([len(session)]) + session
                         + struct.pack(">H", 0xC02F) + b"\x00")

    session = bytes(range(32))
    full = record(22, server_hello(session) + handshake(11, b"cert") + handshake(14, b""))
    # resumed: ServerHello, then at once ChangeCipherSpec and the encrypted Finished; then the answer
    resumed = record(22, server_hello(session)) + record(20, b"\x01") + record(22, bytes(40)) + record(23, bytes(300))
    capture = tmp_path / "net.pcap"
    capture.write_bytes(pcap([
        frame(CLIENT_PORT, SERVER_PORT, 1, record(22, hello(b""))),
        frame(SERVER_PORT, CLIENT_PORT, 1, full),
        frame(CLIENT_PORT + 1, SERVER_PORT, 1, record(22, hello(session))),
        frame(SERVER_PORT, CLIENT_PORT + 1, 1, resumed),
        frame(CLIENT_PORT + 1, SERVER_PORT, 1 + 5 + len(hello(session)),
              record(20, b"\x01") + record(22, bytes(40)) + record(23, bytes(120))),
    ]))
    first, second = tls_wire.read_all(capture, SERVER_PORT)
    assert not first.resumed and first.server.handshakes == ["ServerHello", "Certificate", "ServerHelloDone"]
    assert first.client.application_bytes == 0 and not first.client.encrypted
    assert second.resumed and second.suite_name == "ECDHE-RSA-AES128-GCM-SHA256"
    assert (second.client.application_bytes, second.server.application_bytes) == (120, 300)
    assert tls_wire.read(capture, SERVER_PORT) == first
