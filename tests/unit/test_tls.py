"""The broker's certificate and TLS context, with real handshakes by `openssl s_client`."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import broker.web.tls
from broker.shared.errors import ConfigError
from broker.web.tls import CIPHERS, ServerCertificate, describe, ensure_certificate, server_context

NAMES = ["boot.example.org", "192.0.2.5", "2001:db8::5"]


def pair(tmp_path: Path, name: str = "tls") -> tuple[Path, Path]:
    return tmp_path / name / "broker.crt", tmp_path / name / "broker.key"


def openssl_x509(cert: Path, *options: str) -> str:
    return subprocess.run(
        ["openssl", "x509", "-noout", "-in", str(cert), *options], capture_output=True, text=True, check=True,
    ).stdout


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_first_start_generates_a_certificate_with_safe_modes(tmp_path: Path, umask: int) -> None:
    cert_path, key_path = tmp_path / "var" / "lib" / "broker.crt", tmp_path / "var" / "lib" / "broker.key"
    old = os.umask(umask)
    try:
        cert = ensure_certificate(cert_path, key_path, NAMES)
    finally:
        os.umask(old)
    assert cert.generated and cert.names == tuple(NAMES)
    assert (cert.certificate, cert.key) == (cert_path, key_path)
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert cert_path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "var").stat().st_mode & 0o777 == 0o700  # every directory it made, not just the last
    assert (tmp_path / "var" / "lib").stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in cert_path.parent.iterdir()) == ["broker.crt", "broker.key"]  # no temp files
    fingerprint = openssl_x509(cert_path, "-fingerprint", "-sha256").strip().split("=", 1)[1]
    assert cert.fingerprint == fingerprint


def test_the_certificate_is_what_ipxe_needs(tmp_path: Path) -> None:
    cert = ensure_certificate(*pair(tmp_path), NAMES)
    text = openssl_x509(cert.certificate, "-text")
    assert "DNS:boot.example.org, IP Address:192.0.2.5, IP Address:2001:DB8:0:0:0:0:0:5" in text
    assert "Public-Key: (2048 bit)" in text and "Signature Algorithm: sha256WithRSAEncryption" in text
    loaded = x509.load_pem_x509_certificate(cert.certificate.read_bytes())
    assert loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "boot.example.org"
    assert loaded.subject == loaded.issuer
    constraints = loaded.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = loaded.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert list(loaded.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    lifetime = loaded.not_valid_after_utc - loaded.not_valid_before_utc
    assert 3650 <= lifetime.days <= 3652


def test_an_ecdsa_certificate_for_ipxe_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "broker.web.tls")
    cert = ensure_certificate(*pair(tmp_path), NAMES, key_type="ecdsa")
    assert cert.generated and cert.key_type == "ECDSA P-256"
    text = openssl_x509(cert.certificate, "-text")
    assert "ASN1 OID: prime256v1" in text and "Signature Algorithm: ecdsa-with-SHA256" in text
    loaded = x509.load_pem_x509_certificate(cert.certificate.read_bytes())
    usage = loaded.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment  # an EC key encrypts nothing
    assert "generated a self-signed ECDSA P-256 certificate" in caplog.text
    again = ensure_certificate(*pair(tmp_path), NAMES, key_type="ecdsa")
    assert not again.generated and again.fingerprint == cert.fingerprint and again.key_type == "ECDSA P-256"
    assert "(ECDSA P-256)" in describe(again).splitlines()[0]


def test_a_certificate_of_another_key_type_is_kept_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = ensure_certificate(*pair(tmp_path), NAMES)  # RSA, then the site sets key_type = "ecdsa"
    again = ensure_certificate(*pair(tmp_path), NAMES, key_type="ecdsa")
    assert again.fingerprint == first.fingerprint and again.key_type == "RSA-2048"
    warning = next(r for r in caplog.records if "key_type" in r.getMessage())
    assert warning.levelname == "WARNING"
    assert "has an RSA-2048 key while key_type is ecdsa; it is kept" in warning.getMessage()
    assert "rebuild iPXE with TRUST=" in warning.getMessage()


def test_a_key_ipxe_cannot_verify_is_refused(tmp_path: Path) -> None:
    cert_path, key_path = pair(tmp_path)
    key_path.parent.mkdir(mode=0o700)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521", "-nodes",
                    "-subj", "/CN=boot.example.org", "-keyout", str(key_path), "-out", str(cert_path)],
                   capture_output=True, check=True)
    key_path.chmod(0o600)
    with pytest.raises(ConfigError, match="must be RSA or ECDSA on P-256 or P-384"):
        ensure_certificate(cert_path, key_path, NAMES)


def test_a_second_start_loads_the_same_certificate(tmp_path: Path) -> None:
    first = ensure_certificate(*pair(tmp_path), NAMES)
    again = ensure_certificate(*pair(tmp_path), NAMES)
    assert not again.generated
    assert again.fingerprint == first.fingerprint and again.names == first.names
    other = ensure_certificate(*pair(tmp_path, "other"), NAMES)
    assert other.fingerprint != first.fingerprint  # a fresh key and serial each time


def test_a_name_longer_than_a_common_name_may_be_goes_in_the_san_only(tmp_path: Path) -> None:
    long_name = "a" * 60 + ".example.org"
    cert = ensure_certificate(*pair(tmp_path), [long_name, "boot.example.org", long_name])
    assert cert.names == (long_name, "boot.example.org")  # duplicates listed once
    loaded = x509.load_pem_x509_certificate(cert.certificate.read_bytes())
    assert loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bootbroker"


def test_a_missing_name_is_warned_about_not_regenerated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = ensure_certificate(*pair(tmp_path), NAMES)
    # The same names, written differently, are not missing.
    ensure_certificate(*pair(tmp_path), ["BOOT.example.org", "2001:DB8:0::5"])
    assert "does not name" not in caplog.text
    again = ensure_certificate(*pair(tmp_path), [*NAMES, "boot2.example.org", "192.0.2.6"])
    assert again.fingerprint == first.fingerprint and again.names == tuple(NAMES) and not again.generated
    warning = next(r for r in caplog.records if "does not name" in r.getMessage())
    assert warning.levelname == "WARNING" and warning.name == "broker.web.tls"
    assert "does not name boot2.example.org, 192.0.2.6 (" in warning.getMessage()
    assert "delete it and" in warning.getMessage() and "restart" in warning.getMessage()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o700])
def test_a_key_others_can_reach_is_refused(tmp_path: Path, mode: int) -> None:
    cert_path, key_path = pair(tmp_path)
    ensure_certificate(cert_path, key_path, NAMES)
    key_path.chmod(mode)
    if mode & 0o077:
        with pytest.raises(ConfigError, match=f"run: chmod 600 {key_path}"):
            ensure_certificate(cert_path, key_path, NAMES)
    else:
        ensure_certificate(cert_path, key_path, NAMES)  # owner-only modes are fine


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_key_someone_else_owns_is_refused(tmp_path: Path) -> None:
    cert_path, key_path = pair(tmp_path)
    ensure_certificate(cert_path, key_path, NAMES)
    os.chown(key_path, 65534, -1)
    with pytest.raises(ConfigError, match=f"owned by uid 65534.*chown 0 {key_path}"):
        ensure_certificate(cert_path, key_path, NAMES)


@pytest.mark.parametrize("remove", ["certificate", "key"])
def test_half_a_pair_is_refused(tmp_path: Path, remove: str) -> None:
    cert_path, key_path = pair(tmp_path)
    ensure_certificate(cert_path, key_path, NAMES)
    gone, kept = (cert_path, key_path) if remove == "certificate" else (key_path, cert_path)
    gone.unlink()
    with pytest.raises(ConfigError) as info:
        ensure_certificate(cert_path, key_path, NAMES)
    assert info.value.source == str(gone)
    assert info.value.problems == [f"missing while {kept} exists; restore it, or delete {kept} and restart to have both generated again"]
    assert not gone.exists()  # nothing was regenerated


def test_garbage_is_refused(tmp_path: Path) -> None:
    cert_path, key_path = pair(tmp_path)
    ensure_certificate(cert_path, key_path, NAMES)
    good = cert_path.read_bytes()
    cert_path.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        ensure_certificate(cert_path, key_path, NAMES)
    cert_path.write_bytes(good)
    key_path.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        ensure_certificate(cert_path, key_path, NAMES)


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    cert_a, key_a = pair(tmp_path, "a")
    cert_b, key_b = pair(tmp_path, "b")
    ensure_certificate(cert_a, key_a, NAMES)
    ensure_certificate(cert_b, key_b, NAMES)
    key_a.write_bytes(key_b.read_bytes())
    with pytest.raises(ConfigError, match=f"does not belong to {cert_a}"):
        ensure_certificate(cert_a, key_a, NAMES)


def test_no_names_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no names"):
        ensure_certificate(*pair(tmp_path), [])
    assert not (tmp_path / "tls").exists()


def test_a_failed_write_leaves_no_half_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert_path, key_path = pair(tmp_path)
    write = broker.web.tls.write_atomically

    def fail_on_certificate(path: Path, data: bytes, mode: int) -> None:
        if path == cert_path:
            raise OSError(28, "No space left on device")
        write(path, data, mode)

    monkeypatch.setattr(broker.web.tls, "write_atomically", fail_on_certificate)
    with pytest.raises(ConfigError, match="No space left on device"):
        ensure_certificate(cert_path, key_path, NAMES)
    assert list(cert_path.parent.iterdir()) == []
    monkeypatch.undo()
    assert ensure_certificate(cert_path, key_path, NAMES).generated  # the next start just tries again


def test_a_key_too_small_for_security_level_2_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.web.tls, "DEFAULT_KEY_BITS", 1024)
    small = ensure_certificate(*pair(tmp_path), NAMES)
    monkeypatch.undo()
    # OpenSSL itself refuses it: the context runs at security level 2, whatever the host's default.
    with pytest.raises(ConfigError, match="key too small"):
        server_context(small)
    with pytest.raises(ConfigError, match="RSA-1024 key is too small"):
        ensure_certificate(*pair(tmp_path), NAMES)


def test_describe_says_how_workstations_trust_it(tmp_path: Path) -> None:
    cert = ensure_certificate(*pair(tmp_path), NAMES)
    text = describe(cert)
    assert str(cert.certificate) in text.splitlines()[0]
    assert "boot.example.org, 192.0.2.5, 2001:db8::5" in text
    assert f"SHA-256 fingerprint: {cert.fingerprint}" in text
    assert f"TRUST={cert.certificate}" in text


def test_the_cipher_string_is_exactly_the_ipxe_suites() -> None:
    listed = subprocess.run(["openssl", "ciphers", "-v", CIPHERS], capture_output=True, text=True, check=True).stdout
    tls12 = [line.split() for line in listed.splitlines() if " TLSv1.2 " in line]
    assert [row[0] for row in tls12] == [
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA256",
        "AES256-GCM-SHA384", "AES128-GCM-SHA256",
        "AES256-SHA256", "AES128-SHA256",
    ]
    assert all(row[5] in ("Mac=AEAD", "Mac=SHA256", "Mac=SHA384") for row in tls12)
    assert not re.search(r"TLSv1(\.1)? |SSLv3", listed)


def test_the_context_settings(tmp_path: Path) -> None:
    # Settings the handshakes below cannot all show: OpenSSL 3's security level refuses TLS 1.1 on its
    # own, and nothing here renegotiates. (Python 3.10+ defaults to some of them; tls.py sets them anyway.)
    context = server_context(ensure_certificate(*pair(tmp_path), NAMES))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED
    wanted = ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    assert context.options & wanted == wanted


@contextlib.contextmanager
def serving(cert: ServerCertificate) -> Iterator[int]:
    """A TLS server on loopback with the broker's context for `cert`; each connection is handshaken,
    greeted and closed. Yields its port."""
    context = server_context(cert)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)  # how often the loop looks at `stop`
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(30)  # a stuck client cannot hang the loop
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"#!ipxe\n")
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with serving(ensure_certificate(*pair(tmp_path_factory.mktemp("srv")), ["127.0.0.1"])) as port:
        yield port


@pytest.fixture(scope="module")
def ecdsa_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with serving(ensure_certificate(*pair(tmp_path_factory.mktemp("srv")), ["127.0.0.1"], key_type="ecdsa")) as port:
        yield port


def s_client(port: int, *options: str) -> tuple[str, str | None, str | None]:
    """openssl s_client's whole output, and the protocol and cipher it negotiated (None when it did not).
    -ign_eof: it reads until the server closes, rather than quitting at the end of its (empty) stdin."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *options],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )
    output = done.stdout + done.stderr
    found = re.search(r"^New, (\S+), Cipher is (\S+)$", done.stdout, re.MULTILINE)
    if found is None or found[2] == "(NONE)":
        return output, None, None
    return output, found[1], found[2]


@pytest.mark.parametrize("cipher", [
    "AES128-SHA256",  # Debian 12's iPXE (RSA key exchange, AES-CBC, SHA-256)
    "AES256-SHA256",
    "AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",  # iPXE 2022+
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-SHA256",
])
def test_the_suites_ipxe_has_negotiate(tls_server: int, cipher: str) -> None:
    # The client at security level 2, like Debian's: the suites must work there with the RSA-2048 key.
    output, protocol, negotiated = s_client(tls_server, "-tls1_2", "-cipher", f"{cipher}:@SECLEVEL=2")
    assert (protocol, negotiated) == ("TLSv1.2", cipher), output
    assert "#!ipxe" in output  # the connection carried data, not just a handshake


def test_the_server_picks_the_strongest_suite_the_client_has(tls_server: int) -> None:
    output, _, negotiated = s_client(tls_server, "-tls1_2", "-cipher", "AES128-SHA256:AES256-GCM-SHA384:ECDHE-RSA-AES128-SHA256")
    assert negotiated == "ECDHE-RSA-AES128-SHA256", output


@pytest.mark.parametrize("cipher", [
    "ECDHE-ECDSA-AES256-GCM-SHA384",  # iPXE 2.0 with an ECDSA certificate
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-ECDSA-AES128-SHA256",
])
def test_the_ecdsa_suites_negotiate_with_an_ecdsa_certificate(ecdsa_server: int, cipher: str) -> None:
    output, protocol, negotiated = s_client(ecdsa_server, "-tls1_2", "-cipher", f"{cipher}:@SECLEVEL=2")
    assert (protocol, negotiated) == ("TLSv1.2", cipher), output
    assert "#!ipxe" in output


def test_an_ecdsa_certificate_serves_no_client_without_ecdsa(ecdsa_server: int) -> None:
    # What an iPXE older than 2.0 offers: the RSA suites only. The server has no certificate for them.
    output, protocol, negotiated = s_client(ecdsa_server, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256:AES128-SHA256")
    assert (protocol, negotiated) == (None, None), output
    assert "alert handshake failure" in output, output


def test_an_rsa_certificate_ignores_the_ecdsa_suites_offered_first(tls_server: int) -> None:
    output, _, negotiated = s_client(tls_server, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256")
    assert negotiated == "ECDHE-RSA-AES128-GCM-SHA256", output


def test_tls_1_3_stays_on_for_other_clients(tls_server: int) -> None:
    output, protocol, _ = s_client(tls_server)
    assert protocol == "TLSv1.3", output


@pytest.mark.parametrize("options, alert", [
    (["-tls1_2", "-cipher", "AES128-SHA"], "alert handshake failure"),  # SHA-1 MAC
    (["-tls1_2", "-cipher", "AES256-SHA"], "alert handshake failure"),
    (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"], "alert handshake failure"),
    (["-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"], "alert handshake failure"),  # iPXE builds with DHE have ECDHE too
    (["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"], "alert protocol version"),
])
def test_weaker_suites_and_protocols_are_refused_by_the_server(tls_server: int, options: list[str], alert: str) -> None:
    output, protocol, negotiated = s_client(tls_server, *options)
    # The client offered them (it got as far as a handshake); the server's alert refused them.
    assert alert in output, output
    assert (protocol, negotiated) == (None, None), output
