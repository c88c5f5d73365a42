"""The broker's certificate and TLS settings.

iPXE's TLS is small: builds from before 2022 (Debian 12's among them) have TLS 1.2 with RSA key exchange
and AES-CBC with SHA-256 only; newer builds add ECDHE and AES-GCM. The suites below are exactly those
iPXE families, strongest first, so every iPXE that speaks HTTPS finds one, and nothing weaker (no SHA-1
MAC, no 3DES/RC4, no anonymous or PSK suites) is offered to anyone. TLS 1.3 stays on for other clients
(curl, monitoring).

The certificate is self-signed and generated on first start for the configured names; workstations
trust it because iPXE is built with `TRUST=` this certificate (see ipxe/).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_KEY_BITS = 2048  # iPXE handles RSA-2048 well; larger keys are slow in firmware
VALID_DAYS = 3650
CIPHERS = ":".join((
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256",  # iPXE 2022+
    "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA256",
    "AES256-GCM-SHA384", "AES128-GCM-SHA256",
    "AES256-SHA256", "AES128-SHA256",  # every iPXE with HTTPS, Debian 12's included
))


@dataclass(frozen=True)
class ServerCertificate:
    certificate: Path
    key: Path
    fingerprint: str  # SHA-256 of the DER certificate, as `openssl x509 -fingerprint -sha256` prints it
    names: tuple[str, ...]  # the DNS names and addresses in its subjectAltName
    generated: bool  # made by this call


def _fingerprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _san_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(n) for n in san.get_values_for_type(x509.DNSName)) + tuple(
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write a file that appears whole and never with wider permissions than `mode`."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def _generate(certificate: Path, key: Path, names: Sequence[str]) -> ServerCertificate:
    private = rsa.generate_private_key(public_exponent=65537, key_size=DEFAULT_KEY_BITS)
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # keyEncipherment: the RSA key-exchange suites that old iPXE builds use need it.
            x509.KeyUsage(
                digital_signature=True, key_encipherment=True, content_commitment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private, hashes.SHA256())
    )
    for directory in {certificate.parent, key.parent}:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomically(key, private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ), 0o600)
    _write_atomically(certificate, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("generated a self-signed certificate %s for %s", certificate, ", ".join(names))
    return ServerCertificate(certificate, key, _fingerprint(cert), tuple(names), generated=True)


def _load(certificate: Path, key: Path, names: Sequence[str]) -> ServerCertificate:
    info = key.stat()
    problems = []
    if info.st_uid != os.geteuid():
        problems.append(f"{key} belongs to uid {info.st_uid}; it must be the broker's own (chown it to uid {os.geteuid()})")
    if info.st_mode & 0o077:
        problems.append(f"{key} is readable by others (mode {info.st_mode & 0o777:o}); run: chmod 600 {key}")
    if problems:
        raise ConfigError(str(key), problems)
    try:
        cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    except (ValueError, OSError) as e:
        raise ConfigError(str(certificate), [f"not a readable PEM certificate ({e}); fix it, or delete it and "
                                             f"{key} to have both generated again"]) from None
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as e:
        raise ConfigError(str(key), [f"not a readable, unencrypted PEM private key ({e})"]) from None
    public = cert.public_key()
    if not isinstance(private, rsa.RSAPrivateKey) or not isinstance(public, rsa.RSAPublicKey):
        raise ConfigError(str(key), ["the broker's key and certificate must be RSA (the keys iPXE handles)"])
    if private.public_key().public_numbers() != public.public_numbers():
        raise ConfigError(str(key), [f"this key does not belong to {certificate}; restore the matching pair, "
                                     "or delete both to have a new pair generated"])
    present = _san_names(cert)
    missing = [n for n in names if n not in present]
    if missing:
        log.warning(
            "certificate %s does not name %s (it names %s); to get a new one, delete it and %s and restart "
            "(workstations' iPXE must then be rebuilt with TRUST= the new certificate)",
            certificate, ", ".join(missing), ", ".join(present) or "nothing", key,
        )
    return ServerCertificate(certificate, key, _fingerprint(cert), present, generated=False)


def ensure_certificate(certificate: Path, key: Path, names: Sequence[str]) -> ServerCertificate:
    """The broker's certificate: loaded and checked when both files exist, generated when neither does.
    Raises ConfigError saying what to fix otherwise."""
    if not names:
        raise ConfigError(str(certificate), ["no names to put in the certificate; set [broker] url"])
    have_cert, have_key = certificate.exists(), key.exists()
    if have_cert and have_key:
        return _load(certificate, key, names)
    if not have_cert and not have_key:
        return _generate(certificate, key, names)
    present, absent = (certificate, key) if have_cert else (key, certificate)
    raise ConfigError(str(absent), [
        f"missing while {present} exists; restore it, or delete {present} to have both generated again"
    ])


def server_context(cert: ServerCertificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert.certificate, cert.key)
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    return context


def describe(cert: ServerCertificate) -> str:
    return "\n".join((
        f"certificate {cert.certificate}",
        f"  names: {', '.join(cert.names)}",
        f"  SHA-256 fingerprint: {cert.fingerprint}",
        f"  workstations verify it through iPXE built with TRUST={cert.certificate} (see ipxe/README.md)",
    ))
