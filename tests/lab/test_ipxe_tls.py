"""The broker's TLS with a real iPXE: Debian 13's (HTTPS-capable; Debian 12's has no HTTPS).

The workstation's iPXE trusts only the iPXE root CA (no TRUST= in Debian's build), so it must refuse the
broker's self-signed certificate: the handshake goes as far as certificate verification and stops there.
What the test shows, from the client's screen and from its own network capture: iPXE offered its suites,
the broker chose one of its TLS 1.2 suites and sent its certificate, iPXE stopped before the key exchange
with "Permission denied", and no HTTP request reached the broker. (A site's own iPXE, built by
ipxe/build.py with TRUST= the broker's certificate, goes on from there.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import tls_wire
from lab.broker import BrokerDeployment, running
from lab.build import ensure_trixie_ipxe
from lab.ipxe_client import IpxeClient
from lab.vm import CLIENT_SIDE, Lab

STORE = "/srv/btrfs/bootbroker-ipxe-tls"
HTTPS_PORT = 8443


@pytest.fixture(scope="module")
def broker(lab: Lab) -> Iterator[BrokerDeployment]:
    # HTTPS with the certificate the broker generates; no image needed: the client never gets that far
    with running(lab, STORE, advertise=f"{CLIENT_SIDE}:3260", url=f"https://{CLIENT_SIDE}:{HTTPS_PORT}") as deployed:
        yield deployed


def test_debian_13_ipxe_negotiates_tls_with_the_broker_and_refuses_its_self_signed_certificate(
    broker: BrokerDeployment, lab: Lab
) -> None:
    client = IpxeClient(lab, "ipxe-tls", nic="e1000", rom=ensure_trixie_ipxe() / "pxe-e1000.rom", capture=True)
    try:
        client.start(f"{broker.url}/boot.ipxe")
        at = client.wait_for("iPXE 1.21.1", timeout=180)  # Debian 13's build...
        at = client.wait_for("HTTPS", after=at)  # ...lists HTTPS among its features
        at = client.wait_for(f"{broker.url}/boot.ipxe...", after=at)
        at = client.wait_for("Permission denied", after=at, timeout=120)
        client.wait_for("No more network devices", after=at)
    finally:
        client.stop()
    assert client.capture is not None
    handshake = tls_wire.read(client.capture, HTTPS_PORT)
    print(f"iPXE offered {len(handshake.offered)} suites; the broker chose {handshake.suite_name} "
          f"(TLS version 0x{handshake.version or 0:04x}); server sent {handshake.server.handshakes}, "
          f"client sent {handshake.client.handshakes}")
    assert handshake.version == 0x0303  # TLS 1.2: iPXE has no TLS 1.3
    assert handshake.suite in handshake.offered and handshake.suite in tls_wire.SUITES  # one of the broker's suites
    assert handshake.server.handshakes == ["ServerHello", "Certificate", "ServerKeyExchange", "ServerHelloDone"]
    # iPXE checked the certificate and went no further: no key exchange, no encryption, so no request.
    assert handshake.client.handshakes == ["ClientHello"] and not handshake.client.encrypted
    log = broker.log()
    assert "/boot.ipxe" not in log.replace('"GET /health"', "")
