"""The broker's certificate and TLS context, with real handshakes by `openssl s_client`."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from broker.errors import ConfigError
from broker.tls import ensure_certificate, server_context

NAMES = ["boot.example.org", "192.0.2.5", "2001:db8::5"]


def pair(tmp_path: Path, name: str = "tls") -> tuple[Path, Path]:
    return tmp_path / name / "broker.crt", tmp_path / name / "broker.key"


def test_first_start_generates_a_certificate_with_safe_modes(tmp_path: Path) -> None:
    cert_path, key_path = pair(tmp_path)
    cert = ensure_certificate(cert_path, key_path, NAMES)
    assert cert.generated and cert.names == tuple(NAMES)
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert cert_path.stat().st_mode & 0o777 == 0o644
    assert cert_path.parent.stat().st_mode & 0o777 == 0o700
    openssl = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-ext", "subjectAltName", "-in", str(cert_path)],
        capture_output=True, text=True, check=True,
    ).stdout
    assert f"Fingerprint={cert.fingerprint}" in openssl
    assert "DNS:boot.example.org" in openssl and "IP Address:192.0.2.5" in openssl and "IP Address:2001:DB8" in openssl
    loaded = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert loaded.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    again = ensure_certificate(cert_path, key_path, NAMES)
    assert not again.generated and again.fingerprint == cert.fingerprint


def test_a_missing_name_is_warned_about_not_regenerated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert_path, key_path = pair(tmp_path)
    first = ensure_certificate(cert_path, key_path, ["boot.example.org"])
    again = ensure_certificate(cert_path, key_path, ["boot.example.org", "boot2.example.org"])
    assert again.fingerprint == first.fingerprint
    assert "does not name boot2.example.org" in caplog.text and "delete it" in caplog.text


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    cert_path, key_path = pair(tmp_path)
    ensure_certificate(cert_path, key_path, NAMES)
    key_path.chmod(0o640)
    with pytest.raises(ConfigError, match=f"chmod 600 {key_path}"):
        ensure_certificate(cert_path, key_path, NAMES)


@pytest.mark.parametrize("remove", ["crt", "key"])
def test_half_a_pair_is_refused(tmp_path: Path, remove: str) -> None:
    cert_path, key_path = pair(tmp_path)
    ensure_certificate(cert_path, key_path, NAMES)
    (cert_path if remove == "crt" else key_path).unlink()
    with pytest.raises(ConfigError, match="missing while"):
        ensure_certificate(cert_path, key_path, NAMES)


def test_garbage_and_mismatched_pairs_are_refused(tmp_path: Path) -> None:
    cert_a, key_a = pair(tmp_path, "a")
    cert_b, key_b = pair(tmp_path, "b")
    ensure_certificate(cert_a, key_a, NAMES)
    ensure_certificate(cert_b, key_b, NAMES)
    with pytest.raises(ConfigError, match="does not belong"):
        ensure_certificate(cert_a, key_b, NAMES)
    cert_a.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a readable PEM certificate"):
        ensure_certificate(cert_a, key_a, NAMES)
    with pytest.raises(ConfigError, match="no names"):
        ensure_certificate(*pair(tmp_path, "c"), [])


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A TLS server on loopback with the broker's context; each connection is handshaken and closed."""
    cert = ensure_certificate(*pair(tmp_path_factory.mktemp("srv")), ["127.0.0.1"])
    context = server_context(cert)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"#!ipxe\n")
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def s_client(port: int, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *options],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("cipher", [
    "AES128-SHA256",  # Debian 12's iPXE (RSA key exchange, AES-CBC, SHA-256)
    "AES256-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",  # iPXE 2022+
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-SHA256",
])
def test_the_suites_ipxe_has_negotiate(tls_server: int, cipher: str) -> None:
    done = s_client(tls_server, "-tls1_2", "-cipher", cipher)
    negotiated = re.search(r"Cipher is (\S+)", done.stdout)
    assert negotiated is not None, done.stdout + done.stderr
    assert negotiated[1] == cipher


@pytest.mark.parametrize("options, alert", [
    (["-tls1_2", "-cipher", "AES128-SHA"], "alert handshake failure"),  # SHA-1 MAC
    (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"], "alert handshake failure"),
    (["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"], "alert protocol version"),
])
def test_weaker_suites_and_protocols_are_refused_by_the_server(tls_server: int, options: list[str], alert: str) -> None:
    done = s_client(tls_server, *options)
    # The client offered them (it got as far as a handshake); the server's alert refused them.
    assert alert in done.stdout + done.stderr, done.stdout + done.stderr
    negotiated = re.search(r"Cipher is (\S+)", done.stdout)
    assert negotiated is None or negotiated[1] == "(NONE)", done.stdout
