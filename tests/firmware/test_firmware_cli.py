"""`ironcore firmware keygen|sign|verify` as a release engineer runs them, then a device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ironcore.device.secure_boot import SecureBoot
from ironcore.device.software_element import SoftwareElement
from tests.softhsm import PIN, SoftHsm


def ironcore(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
    return subprocess.run(
        [sys.executable, "-m", "ironcore", "firmware", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def refused(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_keygen_sign_verify_then_a_device_boots_it(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text("correct horse battery\n")
    image = tmp_path / "app.bin"
    image.write_bytes(os.urandom(50_000))
    key = ("--passphrase-file", "pass")

    out = ok(ironcore("keygen", "--out", "release.key", *key, cwd=tmp_path))
    assert "release.pub.pem" in out
    assert (tmp_path / "release.key").stat().st_mode & 0o777 == 0o600
    assert "exists" in refused(ironcore("keygen", "--out", "release.key", *key, cwd=tmp_path))

    sign = ("sign", "app.bin", "--key", "release.key", "--model", "sensor-x")
    out = ok(
        ironcore(
            *sign, "--version", "3", "--min-version", "2", "--out", "m.json", *key, cwd=tmp_path
        )
    )
    assert "signed sensor-x version 3 (min version 2, 50000 bytes)" in out
    verify = ("verify", "app.bin", "m.json", "--public-key", "release.pub.pem")
    assert ok(ironcore(*verify, "--model", "sensor-x", cwd=tmp_path)).startswith(
        "OK: sensor-x version 3 (min version 2), 50000 bytes"
    )

    element = SoftwareElement.provision(tmp_path / "element.json")
    public = serialization.load_pem_public_key((tmp_path / "release.pub.pem").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    boot = SecureBoot.provision(element, tmp_path / "device", "sensor-x", public)
    assert boot.install(image.read_bytes(), (tmp_path / "m.json").read_bytes()).ok
    assert boot.boot() == 3

    line = refused(ironcore(*verify, "--model", "sensor-y", cwd=tmp_path))
    assert line == "error: WRONG_MODEL: the manifest is for model 'sensor-x', not 'sensor-y'"
    image.write_bytes(image.read_bytes()[:-1] + b"!")
    assert refused(ironcore(*verify, cwd=tmp_path)).startswith("error: DIGEST_MISMATCH: ")
    (tmp_path / "pass").write_text("wrong passphrase\n")
    line = refused(ironcore(*sign, "--version", "4", "--out", "n.json", *key, cwd=tmp_path))
    assert "wrong passphrase?" in line
    assert "minVersion 5 is above version 4" in refused(
        ironcore(*sign, "--version", "4", "--min-version", "5", "--out", "n.json", cwd=tmp_path)
    )


def test_verify_refuses_another_key_and_bad_files(tmp_path: Path) -> None:
    env_key = tmp_path / "pass"
    env_key.write_text("passphrase one")
    (tmp_path / "app.bin").write_bytes(b"firmware")
    for name in ("one", "two"):
        ok(ironcore("keygen", "--out", f"{name}.key", "--passphrase-file", env_key, cwd=tmp_path))
    ok(
        ironcore(
            *("sign", "app.bin", "--key", "one.key", "--model", "m", "--version", "1"),
            *("--out", "m.json", "--passphrase-file", env_key),
            cwd=tmp_path,
        )
    )
    line = refused(
        ironcore("verify", "app.bin", "m.json", "--public-key", "two.pub.pem", cwd=tmp_path)
    )
    assert line.startswith("error: UNKNOWN_KEY: the manifest is signed by key ")
    (tmp_path / "cut.json").write_bytes((tmp_path / "m.json").read_bytes()[:50])
    line = refused(
        ironcore("verify", "app.bin", "cut.json", "--public-key", "one.pub.pem", cwd=tmp_path)
    )
    assert line.startswith("error: MALFORMED_MANIFEST: manifest is not JSON")
    line = refused(ironcore("verify", "app.bin", "m.json", "--public-key", "m.json", cwd=tmp_path))
    assert line == "error: m.json is not a PEM public key"
    line = refused(
        ironcore("verify", "nope.bin", "m.json", "--public-key", "one.pub.pem", cwd=tmp_path)
    )
    assert line == "error: cannot read nope.bin: No such file or directory"


def test_a_key_on_a_pkcs11_token(softhsm: SoftHsm, tmp_path: Path) -> None:
    token = softhsm.new_token("fw")
    (tmp_path / "app.bin").write_bytes(b"firmware on a token")
    pkcs11 = ("--key-store", "pkcs11", "--token-label", token, "--pin", PIN)
    ok(ironcore("keygen", "--out", "hsm.key", *pkcs11, cwd=tmp_path))
    assert not (tmp_path / "hsm.key").exists()  # the private key stays on the token
    ok(
        ironcore(
            *("sign", "app.bin", "--key", "hsm.key", "--model", "m", "--version", "7"),
            *("--out", "m.json", "--pin", PIN),
            cwd=tmp_path,
        )
    )
    out = ok(ironcore("verify", "app.bin", "m.json", "--public-key", "hsm.pub.pem", cwd=tmp_path))
    assert out.startswith("OK: m version 7 (min version 7)")


@pytest.mark.parametrize("kind", ["hsm", "nothing"])
def test_keygen_refuses_unknown_key_stores(kind: str, tmp_path: Path) -> None:
    line = refused(ironcore("keygen", "--out", "k.key", "--key-store", kind, cwd=tmp_path))
    assert line == f"error: --key-store {kind!r}: use file or pkcs11"
