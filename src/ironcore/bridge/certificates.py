"""TLS for the device bridges: a local CA and server certificate on first start, or the
operator's own; reloadable without dropping connections.

Devices authenticate the server only (they authenticate themselves with JWTs), so the server
needs a certificate whose chain devices trust: `<data-dir>/tls/ca.crt` is that trust anchor
when ironcore generates its own. The server key is ECDSA P-256, as the bridge contract asks.

The servers of a cluster share one CA and server certificate, kept in their database with the
private keys encrypted under a secret every server is given (`encrypt_key`, `decrypt_key`);
`anchor` names the CA a chain leads to, to tell whether two servers present the same one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)
CA_DAYS = 3650
SERVER_DAYS = 825


def local_certificates(tls_dir: Path, hostnames: Sequence[str]) -> tuple[Path, Path]:
    """Make (or reuse) `ca.crt`/`ca.key` and a server certificate for `hostnames`.

    The server certificate is issued again when a hostname it lacks is asked for, so adding
    `--mqtt-hostname` never needs a manual step. Returns (certificate chain, key) paths.
    """
    tls_dir.mkdir(parents=True, exist_ok=True)
    names = server_names(hostnames)
    cert_path, key_path = tls_dir / "server.crt", tls_dir / "server.key"
    found = local_ca(tls_dir)
    if found is None:
        ca_cert, ca_key = new_ca()
        write_ca(tls_dir, ca_cert, ca_key)
        log.warning(
            "created a local CA for the device bridges: devices must trust %s", tls_dir / "ca.crt"
        )
    else:
        ca_cert, ca_key = found
    if cert_path.exists() and key_path.exists() and covers(cert_path.read_bytes(), names):
        return cert_path, key_path
    key, chain = issue_server(ca_key, ca_cert, names)
    write_server(tls_dir, chain, key_pem(key))
    log.info("issued a bridge server certificate for %s", ", ".join(names))
    return cert_path, key_path


def server_names(hostnames: Sequence[str]) -> list[str]:
    """The names a server certificate must cover: `hostnames`, localhost and 127.0.0.1."""
    return sorted({"localhost", "127.0.0.1", *hostnames})


def local_ca(tls_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The CA generated in `tls_dir` by an earlier start, if there is one."""
    ca_cert_path, ca_key_path = tls_dir / "ca.crt", tls_dir / "ca.key"
    if not (ca_cert_path.exists() and ca_key_path.exists()):
        return None
    loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return x509.load_pem_x509_certificate(ca_cert_path.read_bytes()), loaded


def new_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _ca_certificate(key), key


def issue_server(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, names: list[str]
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A new server key and its certificate chain (server certificate, then the CA), PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _server_certificate(key, ca_key, ca_cert, names)
    pem = serialization.Encoding.PEM
    return key, cert.public_bytes(pem) + ca_cert.public_bytes(pem)


def write_ca(
    tls_dir: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey | None
) -> None:
    """`ca.crt` (what devices trust) and, when given, `ca.key` (0600)."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    if ca_key is not None:
        _write(tls_dir / "ca.key", key_pem(ca_key), 0o600)
    _write(tls_dir / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)


def write_server(tls_dir: Path, chain: bytes, key: bytes) -> None:
    """`server.crt` (the chain) and `server.key` (0600, PEM without a password)."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    _write(tls_dir / "server.key", key, 0o600)
    _write(tls_dir / "server.crt", chain, 0o644)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def encrypt_key(key: ec.EllipticCurvePrivateKey, secret: bytes) -> bytes:
    """`key` as PKCS#8 PEM encrypted under `secret` (cryptography's best available: PBES2)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret),
    )


def decrypt_key(pem: bytes, secret: bytes) -> ec.EllipticCurvePrivateKey:
    """The key `encrypt_key` made; ValueError when `secret` is not the one it was made with."""
    loaded = serialization.load_pem_private_key(pem, secret)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return loaded


def anchor(chain: bytes) -> str:
    """The CA a PEM certificate chain leads to, as text: the issuer of its last certificate
    and that issuer's key identifier (a self-signed last certificate is its own issuer). Two
    chains with the same anchor are trusted by the same devices."""
    certs = x509.load_pem_x509_certificates(chain)
    last = certs[-1]
    key_id: bytes | None = None
    if last.issuer == last.subject:
        with contextlib.suppress(x509.ExtensionNotFound):
            key_id = last.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    else:
        with contextlib.suppress(x509.ExtensionNotFound):
            key_id = last.extensions.get_extension_for_class(
                x509.AuthorityKeyIdentifier
            ).value.key_identifier
    name = last.issuer.rfc4514_string()
    return f"{name} (key id {key_id.hex(':')})" if key_id else name


def covers(chain: bytes, names: list[str]) -> bool:
    """Whether the first certificate of `chain` names every one of `names` and has more than
    30 days left."""
    cert = x509.load_pem_x509_certificate(chain)
    expires = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return set(names) <= set(certified_names(cert)) and expires > dt.timedelta(days=30)


def certified_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses in a certificate's subject alternative names."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found = [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    return found + list(san.get_values_for_type(x509.DNSName))


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """TLS 1.2 and 1.3, server authentication only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ironcore local bridge CA")])
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
) -> x509.Certificate:
    alt_names: list[x509.GeneralName] = []
    for item in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(item)))
        except ValueError:
            alt_names.append(x509.DNSName(item))
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(tmp, path)
