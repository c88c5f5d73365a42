"""Read a TLS handshake off the wire: a client VM's pcap (qemu's filter-dump) of its connection to a port.

Only what the lab's TLS tests need: each TCP connection to the port, the stream of each direction
reassembled, split into TLS records, and the handshake messages and alerts before encryption starts
(ClientHello, ServerHello with the chosen version and cipher suite, Certificate, ... ServerHelloDone;
ClientKeyExchange if the client went on), and whether anything was sent encrypted after that.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from broker.web.tls import CIPHERS

# What iPXE 2.0 offers in its ClientHello, in its order (src/crypto/mishmash: each suite's
# __tls_cipher_suite preference, ECDSA before RSA at the same one), by IANA number and OpenSSL name; the
# lab's TLS test checks it against a real ClientHello, and benchmarks/tls_handshakes.py offers the same.
IPXE_2_OFFERS = {
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384", 0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
    0xC023: "ECDHE-ECDSA-AES128-SHA256", 0xC027: "ECDHE-RSA-AES128-SHA256",
    0xC024: "ECDHE-ECDSA-AES256-SHA384", 0xC028: "ECDHE-RSA-AES256-SHA384",
    0xC009: "ECDHE-ECDSA-AES128-SHA", 0xC013: "ECDHE-RSA-AES128-SHA",
    0xC00A: "ECDHE-ECDSA-AES256-SHA", 0xC014: "ECDHE-RSA-AES256-SHA",
    0x009E: "DHE-RSA-AES128-GCM-SHA256", 0x009F: "DHE-RSA-AES256-GCM-SHA384",
    0x0067: "DHE-RSA-AES128-SHA256", 0x006B: "DHE-RSA-AES256-SHA256",
    0x0033: "DHE-RSA-AES128-SHA", 0x0039: "DHE-RSA-AES256-SHA",
    0x009C: "AES128-GCM-SHA256", 0x009D: "AES256-GCM-SHA384",
    0x003C: "AES128-SHA256", 0x003D: "AES256-SHA256",
    0x002F: "AES128-SHA", 0x0035: "AES256-SHA",
}
# The broker's TLS 1.2 suites (broker/web/tls.py CIPHERS), every one of them among iPXE 2.0's.
SUITES = {number: name for number, name in IPXE_2_OFFERS.items() if name in CIPHERS.split(":")}
HANDSHAKES = {
    1: "ClientHello", 2: "ServerHello", 11: "Certificate", 12: "ServerKeyExchange", 13: "CertificateRequest",
    14: "ServerHelloDone", 16: "ClientKeyExchange", 20: "Finished",
}
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23


@dataclass
class Side:
    """What one side sent in the clear: handshake message names, alerts (level, description), whether it
    switched to encryption (ChangeCipherSpec), and how many bytes of application data it sent after that."""

    handshakes: list[str] = field(default_factory=list)
    alerts: list[tuple[int, int]] = field(default_factory=list)
    encrypted: bool = False
    application_bytes: int = 0


@dataclass
class Handshake:
    client: Side
    server: Side
    version: int | None  # the ServerHello's version (0x0303: TLS 1.2)
    suite: int | None  # the ServerHello's cipher suite
    offered: list[int]  # the ClientHello's cipher suites

    @property
    def suite_name(self) -> str:
        return IPXE_2_OFFERS.get(self.suite, f"0x{self.suite:04x}") if self.suite is not None else "none"

    @property
    def resumed(self) -> bool:
        """An abbreviated handshake: the server took the client's session back, so sent no certificate and
        did no key exchange."""
        return self.suite is not None and "Certificate" not in self.server.handshakes and self.server.encrypted


def read(pcap: Path, port: int) -> Handshake:
    """The first TLS connection to `port` in `pcap` (Ethernet, IPv4)."""
    connections = read_all(pcap, port)
    return connections[0] if connections else Handshake(Side(), Side(), None, None, [])


def read_all(pcap: Path, port: int) -> list[Handshake]:
    """Every TLS connection to `port` in `pcap`, in the order they began."""
    return [_handshake(to_server, to_client) for to_server, to_client in _streams(pcap.read_bytes(), port)]


def _handshake(to_server: bytes, to_client: bytes) -> Handshake:
    client, server = Side(), Side()
    version = suite = None
    offered: list[int] = []
    for body in _handshake_bodies(to_client, server):
        if body[0] == 2:  # ServerHello: version(2) random(32) session id(1+n) suite(2)
            version = struct.unpack_from(">H", body, 4)[0]
            sid = body[38]
            suite = struct.unpack_from(">H", body, 39 + sid)[0]
    for body in _handshake_bodies(to_server, client):
        if body[0] == 1:  # ClientHello: version(2) random(32) session id(1+n) suites(2+n)
            sid = body[38]
            count = struct.unpack_from(">H", body, 39 + sid)[0] // 2
            offered = list(struct.unpack_from(f">{count}H", body, 41 + sid))
    return Handshake(client, server, version, suite, offered)


def _handshake_bodies(stream: bytes, side: Side) -> list[bytes]:
    """Split a direction into records; note alerts and encryption; return the cleartext handshake messages."""
    messages = b""
    at = 0
    while at + 5 <= len(stream):
        kind, length = stream[at], struct.unpack_from(">H", stream, at + 3)[0]
        record = stream[at + 5:at + 5 + length]
        at += 5 + length
        if side.encrypted:  # the Finished message, then requests or answers: counted, not read
            side.application_bytes += len(record) if kind == APPLICATION_DATA else 0
        elif kind == HANDSHAKE:
            messages += record
        elif kind == ALERT and len(record) == 2:
            side.alerts.append((record[0], record[1]))
        elif kind == CHANGE_CIPHER_SPEC:
            side.encrypted = True
    bodies = []
    at = 0
    while at + 4 <= len(messages):
        length = int.from_bytes(messages[at + 1:at + 4], "big")
        body = messages[at:at + 4 + length]
        side.handshakes.append(HANDSHAKES.get(body[0], f"type {body[0]}"))
        bodies.append(body)
        at += 4 + length
    return bodies


def _streams(pcap: bytes, port: int) -> list[tuple[bytes, bytes]]:
    """The payload bytes of each TCP connection to `port` (by the client's port, in the order they began),
    client to server and server to client."""
    magic = struct.unpack_from("<I", pcap)[0]
    if magic != 0xA1B2C3D4:
        raise ValueError(f"not a little-endian pcap file (magic 0x{magic:08x})")
    # client port -> segments by sequence number, client to server (True) and server to client (False)
    connections: dict[int, dict[bool, dict[int, bytes]]] = {}
    at = 24
    while at + 16 <= len(pcap):
        length = struct.unpack_from("<I", pcap, at + 8)[0]
        frame = pcap[at + 16:at + 16 + length]
        at += 16 + length
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:  # IPv4 carrying TCP
            continue
        ip = frame[14:]
        tcp = ip[(ip[0] & 0x0F) * 4:]
        source, destination, seq = struct.unpack_from(">HHI", tcp)
        payload = tcp[(tcp[12] >> 4) * 4:struct.unpack_from(">H", ip, 2)[0] - (ip[0] & 0x0F) * 4]
        if destination == port:
            segments = connections.setdefault(source, {True: {}, False: {}})
            if payload:
                segments[True].setdefault(seq, payload)
        elif source == port and destination in connections and payload:
            connections[destination][False].setdefault(seq, payload)
    return [(_joined(both[True]), _joined(both[False])) for both in connections.values()]


def _joined(segments: dict[int, bytes]) -> bytes:
    """In-order bytes from the first segment on, as far as they are contiguous (retransmissions dropped)."""
    if not segments:
        return b""
    ordered = sorted(segments.items())
    data = bytearray(ordered[0][1])
    end = ordered[0][0] + len(ordered[0][1])
    for seq, payload in ordered[1:]:
        if seq > end:
            break
        data += payload[end - seq:]
        end = max(end, seq + len(payload))
    return bytes(data)
