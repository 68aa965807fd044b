"""Where a CA's private key lives: a passphrase-encrypted file, or a PKCS#11 token.

Both kinds sign certificates and CRLs and nothing else leaves them. A PKCS#11 key never
leaves its token, and `cryptography` only signs with its own key objects, so for a token key
the to-be-signed part is built by `cryptography`, signed on the token, and the DER assembled
here (`_assemble`).

A key store is described by a small JSON file next to the certificate (`KeyRef`), so a CA
directory says where its key is without holding a secret in clear.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import NoSuchKey
from pkcs11.types import SignMixin
from pkcs11.util.ec import encode_named_curve_parameters

from ironcore.errors import FailedPrecondition, InvalidArgument
from ironcore.pkcs11_tokens import ec_public_key, pkcs11_session

CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
}
DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


class KeyStore(Protocol):
    """A CA's signing key; the private key itself is never handed out."""

    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """ECDSA over `data` with the curve's hash (SHA-256 or SHA-384); DER signature."""

    def certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate: ...

    def crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList: ...


def hash_for(curve: ec.EllipticCurve) -> hashes.SHA256 | hashes.SHA384:
    try:
        return _HASHES[curve.name]()
    except KeyError:
        raise InvalidArgument(f"unsupported curve {curve.name}; use P-256 or P-384") from None


def curve_named(name: str) -> ec.EllipticCurve:
    try:
        return CURVES[name.upper()]
    except KeyError:
        raise InvalidArgument(f"unsupported curve {name!r}; use P-256 or P-384") from None


@dataclass(frozen=True)
class KeyRef:
    """Where a key is: `kind` "file" (path relative to the ref) or "pkcs11"."""

    kind: str
    path: str = ""
    module: str = ""
    token: str = ""
    label: str = ""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> KeyRef:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise FailedPrecondition(f"cannot read key reference {path}: {exc}") from None

    def open(self, base: Path, passphrase: bytes | None, pin: str | None) -> KeyStore:
        if self.kind == "file":
            if passphrase is None:
                raise InvalidArgument(f"the key in {base / self.path} needs its passphrase")
            return EncryptedFileKey.open(base / self.path, passphrase)
        if self.kind == "pkcs11":
            if pin is None:
                raise InvalidArgument(f"the key on PKCS#11 token {self.token!r} needs its PIN")
            return Pkcs11Key.open(self.module, self.token, self.label, pin)
        raise FailedPrecondition(f"unknown key store kind {self.kind!r}")


class EncryptedFileKey:
    """A private key in a PKCS#8 file encrypted with a passphrase (mode 0600)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self._hash = hash_for(key.curve)

    @classmethod
    def generate(cls, path: Path, curve: ec.EllipticCurve, passphrase: bytes) -> EncryptedFileKey:
        if len(passphrase) < 8:
            raise InvalidArgument("the passphrase must have at least 8 characters")
        hash_for(curve)
        key = ec.generate_private_key(curve)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        if path.exists():
            raise FailedPrecondition(f"{path} exists; refusing to overwrite a key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return cls(key)

    @classmethod
    def open(cls, path: Path, passphrase: bytes) -> EncryptedFileKey:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FailedPrecondition(f"cannot read key {path}: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(data, passphrase)
        except (ValueError, TypeError):
            raise InvalidArgument(f"cannot decrypt {path}: wrong passphrase?") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FailedPrecondition(f"{path} does not hold an EC key")
        return cls(key)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(self._hash))

    def certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self._key, self._hash)

    def crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        return builder.sign(self._key, self._hash)


class Pkcs11Key:
    """An EC key pair generated on a PKCS#11 token, sensitive and never extractable.

    The token hashes nothing (SoftHSM's build has no CKM_ECDSA_SHA256): the digest is made
    here and the token signs it with CKM_ECDSA, returning raw r‖s.
    """

    def __init__(
        self, session: pkcs11.Session, private: SignMixin, public: ec.EllipticCurvePublicKey
    ) -> None:
        self._session = session
        self._private = private
        self._public = public
        self._hash = hash_for(public.curve)

    @classmethod
    def generate(
        cls, module: str, token_label: str, key_label: str, pin: str, curve: ec.EllipticCurve
    ) -> Pkcs11Key:
        hash_for(curve)
        session = pkcs11_session(module, token_label, pin)
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve.name)}, local=True
        )
        public, private = params.generate_keypair(
            store=True,
            label=key_label,
            public_template={Attribute.TOKEN: True},
            private_template={
                Attribute.TOKEN: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
            },
        )
        return cls(session, _signing(private), ec_public_key(public))

    @classmethod
    def open(cls, module: str, token_label: str, key_label: str, pin: str) -> Pkcs11Key:
        session = pkcs11_session(module, token_label, pin)
        try:
            private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_label)
            public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=key_label)
        except NoSuchKey:
            raise FailedPrecondition(
                f"no key {key_label!r} on PKCS#11 token {token_label!r}"
            ) from None
        if not isinstance(public, pkcs11.PublicKey):
            raise FailedPrecondition(f"{key_label!r} on {token_label!r} is not a key pair")
        return cls(session, _signing(private), ec_public_key(public))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        digest = hashlib.new(self._hash.name, data).digest()
        raw = self._private.sign(digest, mechanism=Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        # A throwaway key of the same curve makes the TBS carry the right signature algorithm.
        draft = builder.sign(ec.generate_private_key(self._public.curve), self._hash)
        der = _assemble(draft.tbs_certificate_bytes, draft, self.sign)
        return x509.load_der_x509_certificate(der)

    def crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        draft = builder.sign(ec.generate_private_key(self._public.curve), self._hash)
        der = _assemble(draft.tbs_certlist_bytes, draft, self.sign)
        return x509.load_der_x509_crl(der)


def _signing(private: pkcs11.Key) -> SignMixin:
    if not isinstance(private, SignMixin):
        raise FailedPrecondition("the PKCS#11 private key cannot sign")
    return private


def _assemble(
    tbs: bytes,
    draft: x509.Certificate | x509.CertificateRevocationList,
    sign: Callable[[bytes], bytes],
) -> bytes:
    """Certificate or CertificateList ::= SEQUENCE { tbs, signatureAlgorithm, signature }."""
    algorithm = _der_algorithm(draft)
    signature = sign(tbs)
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + algorithm + bit_string
    return b"\x30" + _der_length(len(body)) + body


def _der_algorithm(draft: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    """The signatureAlgorithm AlgorithmIdentifier of a signed draft, copied byte for byte."""
    der = draft.public_bytes(serialization.Encoding.DER)
    offset = _header_length(der, 0)  # into the outer SEQUENCE
    tbs_end = offset + _element_length(der, offset)
    return der[tbs_end : tbs_end + _element_length(der, tbs_end)]


def _header_length(der: bytes, offset: int) -> int:
    first = der[offset + 1]
    return offset + 2 + (first & 0x7F if first & 0x80 else 0)


def _element_length(der: bytes, offset: int) -> int:
    first = der[offset + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    return 2 + count + int.from_bytes(der[offset + 2 : offset + 2 + count], "big")


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded
