"""The broker's certificate and TLS settings.

iPXE's TLS is small, and the suite list is exactly what it has, strongest first:

- ECDHE-ECDSA with AES-GCM, then AES-CBC and SHA-256/384: iPXE 2.0 (2026), for an ECDSA certificate;
- ECDHE-RSA with AES-GCM: iPXE builds from 2022 on;
- ECDHE-RSA with AES-CBC and SHA-256/384: the same builds;
- RSA key exchange with AES-GCM;
- RSA key exchange with AES-CBC-SHA256: older builds (Debian 12's among them) have only these and the
  SHA-1 variants, so they are what every iPXE with HTTPS can fall back to.

OpenSSL offers only the suites the certificate's key can sign: an RSA certificate serves every iPXE with
HTTPS; an ECDSA one (P-256, far cheaper per handshake: benchmarks/tls_handshakes.py) serves iPXE 2.0 and
later only. The key type is chosen when the certificate is generated (`[broker] key_type`).

Nothing weaker is offered to anyone: no SHA-1 MAC (so no AES-CBC-SHA, though old iPXE has it too), no
3DES, RC4, NULL, anonymous or PSK suites, nothing below TLS 1.2. TLS 1.3 stays on for curl and monitoring.
The security level is pinned to 2 (what Debian builds OpenSSL with) rather than inherited from the host:
every suite above works at it with an RSA-2048 or P-256 key, while level 3 would drop the RSA key-exchange
suites and need a 3072-bit RSA key, which firmware is slow with. The key exchange of those suites also
needs keyEncipherment in an RSA certificate's key usage.

The certificate is self-signed and generated on first start for the configured names; workstations
trust it because iPXE is built with `TRUST=` this certificate (see ipxe/README.md).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..shared.errors import ConfigError
from ..shared.files import write_atomically

log = logging.getLogger(__name__)

DEFAULT_KEY_BITS = 2048  # iPXE handles RSA-2048 well; larger keys are slow in firmware
ECDSA_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}  # the curves iPXE 2.0 verifies signatures on
VALID_DAYS = 3650
CIPHERS = ":".join((
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",  # iPXE 2.0, ECDSA certificate
    "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256",  # iPXE 2022+
    "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA256",
    "AES256-GCM-SHA384", "AES128-GCM-SHA256",
    "AES256-SHA256", "AES128-SHA256",  # every iPXE with HTTPS, Debian 12's included
    "@SECLEVEL=2",
))
_CN_MAX = 64  # X.520 upper bound for commonName; DNS names may be longer (then they are in the SAN only)


@dataclass(frozen=True)
class ServerCertificate:
    certificate: Path
    key: Path
    fingerprint: str  # SHA-256 of the DER certificate, as `openssl x509 -fingerprint -sha256` prints it
    names: tuple[str, ...]  # the DNS names and addresses in its subjectAltName, in its order
    key_type: str  # "RSA-2048", "ECDSA P-256", ...: what the key is, for people and logs
    generated: bool  # made by this call


def _fingerprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _name_text(name: x509.GeneralName) -> str:
    """A SAN entry as configuration writes it: addresses in their canonical form (IPv6 compressed)."""
    return str(name.value)


def _same_name(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()  # DNS names are case-insensitive


def _san_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(_name_text(n) for n in san if isinstance(n, (x509.DNSName, x509.IPAddress)))


def _unique(names: Sequence[str]) -> list[str]:
    unique: list[str] = []
    for name in names:
        if not any(_same_name(name, seen) for seen in unique):
            unique.append(name)
    return unique


def _make_directories(directory: Path) -> None:
    """Create `directory` and every missing parent with mode 0700 (pathlib would give the parents 0755)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=DEFAULT_KEY_BITS)


def _describe_key(private: PrivateKey) -> str:
    if isinstance(private, rsa.RSAPrivateKey):
        return f"RSA-{private.key_size}"
    return f"ECDSA {ECDSA_CURVES.get(private.curve.name, private.curve.name)}"


def _generate(certificate: Path, key: Path, names: Sequence[str], key_type: str) -> ServerCertificate:
    private = _new_key(key_type)
    rsa_key = isinstance(private, rsa.RSAPrivateKey)
    now = datetime.datetime.now(datetime.timezone.utc)
    # iPXE and browsers match the SAN; the CN is only a label, and X.509 caps it at 64 characters.
    label = names[0] if len(names[0]) <= _CN_MAX else "bootbroker"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # keyEncipherment: the RSA key-exchange suites that old iPXE builds use need it (RSA keys only).
            x509.KeyUsage(
                digital_signature=True, key_encipherment=rsa_key, content_commitment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private, hashes.SHA256())
    )
    try:
        for directory in (key.parent, certificate.parent):
            _make_directories(directory)
        write_atomically(key, private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ), 0o600)
        try:
            write_atomically(certificate, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        except BaseException:
            key.unlink(missing_ok=True)  # half a pair would be refused at the next start
            raise
    except OSError as e:
        raise ConfigError(str(certificate), [
            f"cannot write the new certificate and key ({e}); the broker's user needs write access to "
            f"{certificate.parent} and {key.parent}, or set [broker] certificate and key"
        ]) from None
    log.info("generated a self-signed %s certificate %s for %s", _describe_key(private), certificate, ", ".join(names))
    return ServerCertificate(certificate, key, _fingerprint(cert), _san_names(cert), _describe_key(private), generated=True)


def _load(certificate: Path, key: Path, names: Sequence[str], key_type: str) -> ServerCertificate:
    try:
        info = key.stat()
        key_pem = key.read_bytes()
    except OSError as e:
        raise ConfigError(str(key), [f"cannot read the key ({e.strerror}); it must be the broker's own, mode 600"]) from None
    problems = []
    if info.st_uid != os.geteuid():
        problems.append(f"owned by uid {info.st_uid}, not the broker's uid {os.geteuid()}; run: chown {os.geteuid()} {key}")
    if info.st_mode & 0o077:
        problems.append(f"group or others have access (mode {info.st_mode & 0o777:o}); run: chmod 600 {key}")
    if problems:
        raise ConfigError(str(key), problems)
    regenerate = f"or delete it and {key} and restart to have both generated again"
    try:
        cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    except OSError as e:
        raise ConfigError(str(certificate), [f"cannot read the certificate ({e.strerror}); fix that, {regenerate}"]) from None
    except ValueError:
        raise ConfigError(str(certificate), [f"not a PEM certificate; restore it, {regenerate}"]) from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(str(key), [
            f"not an unencrypted PEM private key; restore it, or delete it and {certificate} and restart to "
            "have both generated again"
        ]) from None
    if not (isinstance(private, rsa.RSAPrivateKey)
            or isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name in ECDSA_CURVES):
        raise ConfigError(str(key), [
            "the key must be RSA or ECDSA on P-256 or P-384 (the keys iPXE verifies); restore the right one, "
            f"or delete it and {certificate} and restart to have both generated again"
        ])
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ConfigError(str(key), [
            f"this key does not belong to {certificate}; restore the matching pair, or delete both and "
            "restart to have a new pair generated"
        ])
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size < DEFAULT_KEY_BITS:
        raise ConfigError(str(key), [
            f"an RSA-{private.key_size} key is too small for TLS security level 2; use RSA-{DEFAULT_KEY_BITS}, "
            "or delete both files and restart to have a new pair generated"
        ])
    if ("rsa" if isinstance(private, rsa.RSAPrivateKey) else "ecdsa") != key_type:
        log.warning(
            "certificate %s has an %s key while key_type is %s; it is kept. To change it, delete it and %s "
            "and restart, then rebuild iPXE with TRUST= the new certificate",
            certificate, _describe_key(private), key_type, key,
        )
    present = _san_names(cert)
    missing = [n for n in names if not any(_same_name(n, p) for p in present)]
    if missing:
        log.warning(
            "certificate %s does not name %s (it names %s), so clients using those names will refuse it; "
            "to get one that does, delete it and %s and restart (then rebuild iPXE with TRUST= the new "
            "certificate)",
            certificate, ", ".join(missing), ", ".join(present) or "nothing", key,
        )
    return ServerCertificate(certificate, key, _fingerprint(cert), present, _describe_key(private), generated=False)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as e:  # e.g. a parent directory the broker's user may not search
        raise ConfigError(str(path), [f"cannot look at it ({e.strerror}); the broker's user needs access"]) from None


def ensure_certificate(certificate: Path, key: Path, names: Sequence[str], key_type: str = "rsa") -> ServerCertificate:
    """The broker's certificate: loaded and checked when both files exist, generated for `names` (DNS
    names or IP addresses, the first also its CN) with a `key_type` key ("rsa" or "ecdsa") when neither
    does. An existing certificate is never replaced; names it lacks, or a key of another type than
    `key_type`, are logged as a warning. Raises ConfigError saying what to fix otherwise."""
    if not names:
        raise ConfigError(str(certificate), ["no names to put in the certificate; set [broker] url"])
    have_cert, have_key = _exists(certificate), _exists(key)
    if have_cert and have_key:
        return _load(certificate, key, names, key_type)
    if not have_cert and not have_key:
        return _generate(certificate, key, _unique(names), key_type)
    present, absent = (certificate, key) if have_cert else (key, certificate)
    raise ConfigError(str(absent), [
        f"missing while {present} exists; restore it, or delete {present} and restart to have both generated again"
    ])


def server_context(cert: ServerCertificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)  # first: it sets the security level the key is checked against
    try:
        context.load_cert_chain(cert.certificate, cert.key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(str(cert.certificate), [f"OpenSSL refuses the certificate or key: {e}"]) from None
    # iPXE never renegotiates; refusing it removes a cheap way for a client to make the server work.
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def describe(cert: ServerCertificate) -> str:
    return "\n".join((
        f"certificate {cert.certificate} ({cert.key_type})",
        f"  names: {', '.join(cert.names)}",
        f"  SHA-256 fingerprint: {cert.fingerprint}",
        f"  build the workstations' iPXE with TRUST={cert.certificate} so they can verify it (see ipxe/README.md)",
    ))
