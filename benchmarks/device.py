"""ES256 device JWTs minted per second, by secure element backend.

`python -m benchmarks.device`: the software element (keys in a file) and a SoftHSM2 token
(PKCS#11, CKM_ECDSA), each minting JWTs through `ironcore.device.tokens.es256_jwt` for a few
seconds on one core, next to the floor (the same signature with a `cryptography` key in
memory). Target: ≥ 5,000 JWTs/s for the software element; PKCS#11 is reported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from ironcore.device.secure_element import new_serial_number
from ironcore.device.software_element import SoftwareElement
from ironcore.device.tokens import es256_jwt, es256_jwt_with

SECONDS = 3.0
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


def rate(mint: Callable[[float], str]) -> float:
    mint(time.time())
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        mint(time.time())
        count += 1
    return count / (time.perf_counter() - started)


def floor() -> float:
    key = ec.generate_private_key(ec.SECP256R1())

    def sign(digest: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        return r.to_bytes(32) + s.to_bytes(32)

    return rate(lambda now: es256_jwt_with(sign, "bench", now))


def softhsm(tmp: Path) -> float | None:
    if not (Path(SOFTHSM).exists() and shutil.which("softhsm2-util")):
        return None
    (tmp / "tokens").mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    from ironcore.device.pkcs11_element import Pkcs11Element, init_softhsm_token

    serial = new_serial_number()
    init_softhsm_token(serial, "1234", "1234")
    element = Pkcs11Element.provision(SOFTHSM, serial, "1234")
    return rate(lambda now: es256_jwt(element, 0, "bench", now))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        software = SoftwareElement.provision(Path(tmp) / "element.se")
        rows = [
            ("software element (file)", rate(lambda now: es256_jwt(software, 0, "bench", now))),
            ("cryptography key in memory (floor)", floor()),
        ]
        hsm = softhsm(Path(tmp))
        if hsm is not None:
            rows.insert(1, ("PKCS#11 token (SoftHSM2)", hsm))
    load = os.getloadavg()[0]
    print(f"ES256 JWTs minted per second, one core, {SECONDS:.0f} s each (load average {load:.1f})")
    print("| backend | JWTs/s | vs floor | target |")
    print("|---|---|---|---|")
    best = rows[-1][1]
    for name, value in rows:
        target = "5,000" if name.startswith("software") else "-"
        print(f"| {name} | {value:,.0f} | {value / best:.2f}x | {target} |")
    if hsm is None:
        print("SoftHSM2 is not installed: no PKCS#11 row (apt-get install softhsm2)")


if __name__ == "__main__":
    main()
