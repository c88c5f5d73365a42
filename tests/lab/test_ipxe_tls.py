"""The broker's TLS and the iPXE that must trust it, with real iPXE builds and what they put on the wire.

The site's iPXE (v2.0.0 built by ipxe/build.py from the release tarball, lab/ipxe_build.py) trusts one
certificate. Workstations here boot as a site's do: PXE, DHCP and TFTP of that build, its embedded script,
then HTTPS to the broker. Built to trust another certificate, it must refuse the broker and send nothing;
when the broker's certificate is replaced, the old build refuses and a rebuild logs in. Debian 13's
packaged iPXE (no TRUST= of ours) must refuse the broker's self-signed certificate as well, after
negotiating one of the broker's suites: the older builds a site may still run. The whole flow over TLS
to a booted OS, BIOS and UEFI, is test_real_os.py's (its workstations boot the same build).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from lab import tls_wire
from lab.broker import HTTPS_URL, BrokerDeployment, lab_tls, running
from lab.build import ensure_trixie_ipxe
from lab.ipxe_build import VERSION
from lab.ipxe_client import IpxeClient
from lab.vm import CLIENT_SIDE, GUEST_PORTS, Lab
from tests.lab import Report

STORE = "/srv/btrfs/bootbroker-ipxe-tls"
HTTPS_PORT = GUEST_PORTS["broker"]
REFUSED = "Permission denied"  # what iPXE prints when the certificate is not one it trusts
REQUEST = re.compile(r'"[A-Z]+ /')  # the broker's access log: 10.0.2.2 "GET /boot.ipxe" 200 0.004s
GAVE_UP = "could not be reached"  # ipxe/embed.ipxe, after its tries (the rest of the line wraps at 80 columns)


@pytest.fixture(scope="module")
def broker(lab: Lab) -> Iterator[BrokerDeployment]:
    # the lab's certificate, installed as a site installs its own; an image (random bytes: nobody boots it
    # here) so that a login ends at the disk menu
    lab.run(["rm", "-rf", STORE])
    with running(lab, STORE, advertise=f"{CLIENT_SIDE}:3260", url=HTTPS_URL, tls=lab_tls(),
                 publish=lambda h: h.publish_random_golden("demo")) as deployed:
        yield deployed


def requests_in(log: str) -> list[str]:
    """The requests the broker's access log shows, but the lab's own health checks."""
    return [line for line in log.splitlines() if REQUEST.search(line) and '"GET /health"' not in line]


def refused_everywhere(client: IpxeClient) -> list[tls_wire.Handshake]:
    """The workstation's TLS connections to the broker, each checked to have stopped at the certificate:
    its ClientHello, nothing encrypted, no key exchange; returns them."""
    assert client.capture is not None
    connections = tls_wire.read_all(client.capture, HTTPS_PORT)
    assert connections, "no TLS connection to the broker in the capture"
    for handshake in connections:
        assert handshake.server.handshakes[:2] == ["ServerHello", "Certificate"]
        assert handshake.client.handshakes == ["ClientHello"] and not handshake.client.encrypted
        assert handshake.client.application_bytes == 0
    return connections


def test_debian_13_ipxe_negotiates_tls_with_the_broker_and_refuses_its_self_signed_certificate(
    broker: BrokerDeployment, lab: Lab, report: Report
) -> None:
    client = IpxeClient(lab, "ipxe-tls", nic="e1000", rom=ensure_trixie_ipxe() / "pxe-e1000.rom", capture=True)
    try:
        client.start(f"{broker.url}/boot.ipxe")
        at = client.wait_for("iPXE 1.21.1", timeout=180)  # Debian 13's build...
        at = client.wait_for("HTTPS", after=at)  # ...lists HTTPS among its features
        at = client.wait_for(f"{broker.url}/boot.ipxe...", after=at)
        at = client.wait_for(REFUSED, after=at, timeout=120)
        client.wait_for("No more network devices", after=at)
    finally:
        client.stop()
    assert client.capture is not None
    handshake = tls_wire.read(client.capture, HTTPS_PORT)
    report(f"iPXE 1.21.1 offered {len(handshake.offered)} suites; the broker chose {handshake.suite_name} "
           f"(TLS version 0x{handshake.version or 0:04x}); server sent {handshake.server.handshakes}, "
           f"client sent {handshake.client.handshakes}")
    assert handshake.version == 0x0303  # TLS 1.2: iPXE has no TLS 1.3
    assert handshake.suite in handshake.offered and handshake.suite in tls_wire.SUITES  # one of the broker's suites
    assert handshake.server.handshakes == ["ServerHello", "Certificate", "ServerKeyExchange", "ServerHelloDone"]
    # iPXE checked the certificate and went no further: no key exchange, no encryption, so no request.
    refused_everywhere(client)
    assert requests_in(broker.log()) == []


def test_the_sites_ipxe_built_to_trust_another_certificate_refuses_the_broker_and_sends_nothing(
    broker: BrokerDeployment, lab: Lab, report: Report
) -> None:
    other = lab_tls("ecdsa", key_type="ecdsa")  # a certificate that is not the broker's, and the build that trusts only it
    client = IpxeClient(lab, "ipxe-other-trust", capture=True)
    try:
        client.pxe_boot(other.ipxe)
        at = client.wait_for(f"iPXE {VERSION}", timeout=180)  # the site's build, chainloaded by PXE...
        at = client.wait_for(f"contacting the boot service at {HTTPS_URL}", after=at)  # ...ran its script
        at = client.wait_for(REFUSED, after=at, timeout=120)
        client.wait_for(GAVE_UP, after=at, timeout=120)  # its script tried again, and gave up
    finally:
        client.stop()
    connections = refused_everywhere(client)
    report(f"iPXE {VERSION} trusting another certificate: {len(connections)} connections, each refused at the "
           f"broker's certificate ({connections[0].suite_name} chosen); no request reached the broker")
    assert len(connections) >= 2  # each try of the embedded script
    assert requests_in(broker.log()) == []


def test_a_replaced_broker_certificate_is_refused_by_the_old_build_and_a_rebuilt_ipxe_logs_in(
    broker: BrokerDeployment, lab: Lab, report: Report
) -> None:
    # The new certificate is an ECDSA one: iPXE 2.0's cheaper choice (README: TLS suites), shown to work here.
    old, new = broker.tls, lab_tls("ecdsa", key_type="ecdsa")
    assert old is not None
    broker.stop()
    broker.install_tls(new)  # what a site does: its new certificate and key in place, and a restart
    broker.start()
    try:
        stale = IpxeClient(lab, "ipxe-old-build", capture=True)
        try:
            stale.pxe_boot(old.ipxe)
            at = stale.wait_for(f"contacting the boot service at {HTTPS_URL}", timeout=180)
            stale.wait_for(REFUSED, after=at, timeout=120)
        finally:
            stale.stop()
        refused_everywhere(stale)
        assert requests_in(broker.log()) == []

        rebuilt = IpxeClient(lab, "ipxe-rebuilt", firmware="uefi", capture=True)
        try:
            rebuilt.pxe_boot(new.ipxe)
            rebuilt.log_in("student1", broker.passwords["student1"])
        finally:
            rebuilt.stop()
        assert rebuilt.capture is not None
        connections = tls_wire.read_all(rebuilt.capture, HTTPS_PORT)
        assert connections and all(c.client.application_bytes > 0 for c in connections)
        assert any("/login.ipxe" in line for line in requests_in(broker.log()))
        # What benchmarks/tls_handshakes.py offers as iPXE 2.0 is what a real one offers, in its order.
        assert [tls_wire.IPXE_2_OFFERS.get(s, f"0x{s:04x}") for s in connections[0].offered] == list(tls_wire.IPXE_2_OFFERS.values())
        assert {c.suite_name for c in connections if not c.resumed} == {"ECDHE-ECDSA-AES256-GCM-SHA384"}
        report(f"UEFI, the rebuilt iPXE {VERSION} with the ECDSA certificate: {len(connections)} connections, suite "
               f"{connections[0].suite_name}; {sum(c.resumed for c in connections)} resumed a session")
    finally:
        broker.stop()
        broker.install_tls(old)
        broker.start()
