"""Device JWT verification throughput: ironcore vs PyJWT vs cryptography's verify alone.

Run from the project root: `.venv/bin/python -m benchmarks.jwt_verify`. Every bridge connection
and every HTTP bridge request verifies one token, so this is the per-core ceiling of device
authentication. The process is pinned to one CPU; the verifiers take turns in short rounds over
the same tokens so that machine noise hits them alike, and each reports its best round.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from types import ModuleType

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ironcore import limits
from ironcore.identity.credentials import Algorithm, ParsedKey
from ironcore.identity.jwt import verify_device_jwt

try:
    import jwt as pyjwt_module

    pyjwt: ModuleType | None = pyjwt_module
except ImportError:
    pyjwt = None

PROJECT = "bench-project"
TOKENS = 32
ROUNDS = 6
ROUND_SECONDS = 0.25

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _sign(key: PrivateKey, signing_input: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32) + s.to_bytes(32)
    return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def _mint(key: PrivateKey, alg: str, iat: int) -> str:
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    claims = {"iat": iat, "exp": iat + 20 * 60, "aud": PROJECT}
    signing_input = header + b"." + _b64(json.dumps(claims).encode())
    return (signing_input + b"." + _b64(_sign(key, signing_input))).decode()


def _raw_verifier(key: PrivateKey, tokens: list[str]) -> Callable[[int], None]:
    """Only the signature check, with the signature already decoded: the floor."""
    prepared = []
    for token in tokens:
        signing_input, _, sig_b64 = token.encode().rpartition(b".")
        signature = base64.urlsafe_b64decode(sig_b64 + b"=" * (-len(sig_b64) % 4))
        prepared.append((signing_input, signature))
    public_key = key.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        ecdsa = ec.ECDSA(hashes.SHA256())
        der = [
            (msg, encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:])))
            for msg, sig in prepared
        ]

        def run_ec(n: int) -> None:
            for i in range(n):
                msg, sig = der[i % TOKENS]
                public_key.verify(sig, msg, ecdsa)

        return run_ec
    assert isinstance(public_key, rsa.RSAPublicKey)
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()

    def run_rsa(n: int) -> None:
        for i in range(n):
            msg, sig = prepared[i % TOKENS]
            public_key.verify(sig, msg, pkcs1, sha256)

    return run_rsa


def _ironcore_verifier(parsed: ParsedKey, tokens: list[str]) -> Callable[[int], None]:
    def run(n: int) -> None:
        keys = [parsed]
        now = time.time()
        for i in range(n):
            verify_device_jwt(tokens[i % TOKENS], keys, PROJECT, now)

    return run


def _pyjwt_verifier(
    module: ModuleType, parsed: ParsedKey, alg: str, tokens: list[str]
) -> Callable[[int], None]:
    options = {"require": ["iat", "exp", "aud"], "verify_aud": True, "verify_exp": True}

    def run(n: int) -> None:
        for i in range(n):
            module.decode(
                tokens[i % TOKENS],
                parsed.public_key,
                algorithms=[alg],
                audience=PROJECT,
                options=options,
                leeway=limits.JWT_CLOCK_SKEW_SECONDS,
            )

    return run


def _best_rates(verifiers: dict[str, Callable[[int], None]]) -> dict[str, float]:
    # Calibrate a batch size per verifier that takes about one round, warming it up as we go.
    batches = {}
    for name, run in verifiers.items():
        n = 64
        while True:
            start = time.perf_counter()
            run(n)
            elapsed = time.perf_counter() - start
            if elapsed >= ROUND_SECONDS / 4:
                break
            n *= 2
        batches[name] = max(1, int(n * ROUND_SECONDS / elapsed))
    best = dict.fromkeys(verifiers, 0.0)
    for _ in range(ROUNDS):
        for name, run in verifiers.items():
            n = batches[name]
            start = time.perf_counter()
            run(n)
            best[name] = max(best[name], n / (time.perf_counter() - start))
    return best


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    now = int(time.time())
    print("Device JWT verification, single core, best of", ROUNDS, "rounds")
    if pyjwt is None:
        print("PyJWT is not installed: its column is skipped (pip install pyjwt to compare).")
    else:
        print(f"PyJWT {pyjwt.__version__}")
    print()
    print(f"{'alg':<6} {'verifier':<34} {'verifs/s':>10} {'µs/op':>8} {'vs PyJWT':>9}")
    cases: list[tuple[str, Algorithm, PrivateKey]] = [
        ("ES256", Algorithm.ES256, ec.generate_private_key(ec.SECP256R1())),
        ("RS256", Algorithm.RS256, rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ]
    for alg, algorithm, key in cases:
        tokens = [_mint(key, alg, now - i) for i in range(TOKENS)]
        parsed = ParsedKey(algorithm, key.public_key(), None)
        verifiers = {"ironcore verify_device_jwt": _ironcore_verifier(parsed, tokens)}
        if pyjwt is not None:
            verifiers["PyJWT jwt.decode"] = _pyjwt_verifier(pyjwt, parsed, alg, tokens)
        verifiers["cryptography verify only (floor)"] = _raw_verifier(key, tokens)
        rates = _best_rates(verifiers)
        reference = rates.get("PyJWT jwt.decode")
        for name, rate in rates.items():
            ratio = f"{rate / reference:8.2f}x" if reference else f"{'-':>9}"
            print(f"{alg:<6} {name:<34} {rate:>10,.0f} {1e6 / rate:>8.1f} {ratio}")


if __name__ == "__main__":
    main()
