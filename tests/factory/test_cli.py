"""The manufacturing story through the real `ironcore` command and a real server process:
CA, batch signer, reel, import, re-import, revocation, CRL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.conftest import Server
from tests.factory.owner import VECTORS


def ironcore(server: Server | None, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
    env.update(HOME=str(home), IRONCORE_CA_PASSPHRASE="correct horse battery")
    if server is not None:
        env.update(IRONCORE_TOKEN=server.token, IRONCORE_SERVER=server.url)
    return subprocess.run(
        [sys.executable, "-m", "ironcore", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.databases("sqlite")
def test_manufacturing_story(server: Server, tmp_path: Path) -> None:
    pki = str(tmp_path / "pki")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return ironcore(server, tmp_path, *args)

    made = run("ca", "init", "--dir", pki, "--org", "Acme", "--curve", "P-384")
    assert made.returncode == 0, made.stderr
    assert "CN=Acme Root CA,O=Acme" in made.stdout
    assert run("ca", "signer", "create", "--batch", "b1", "--dir", pki).returncode == 0
    reel = run(
        "factory",
        "reel",
        "--signer",
        "b1",
        "--count",
        "3",
        "--out",
        str(tmp_path / "reel"),
        "--dir",
        pki,
    )
    assert reel.returncode == 0, reel.stderr
    assert "3 elements" in reel.stdout

    created = run("registries", "create", "factory-reg", "--ca-cert", f"{pki}/root.crt")
    assert created.returncode == 0, created.stderr
    manifest = str(tmp_path / "reel" / "manifest.json")
    signer = f"{pki}/manifest-signer.crt"
    first = run(
        "--json", "manifest", "import", manifest, "-r", "factory-reg", "--trust-signer", signer
    )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["imported"] == 3
    again = run("manifest", "import", manifest, "-r", "factory-reg", "--trust-signer", signer)
    assert again.returncode == 0 and "imported 0, unchanged 3, rejected 0" in again.stdout

    genuine = run(
        "manifest", "import", str(VECTORS / "manifest_ATECC608A-MAH4I.json"), "-r", "factory-reg"
    )
    assert genuine.returncode == 1
    assert "registry's CA certificates" in genuine.stdout

    truncated = tmp_path / "truncated.json"
    truncated.write_text(Path(manifest).read_text()[:500])
    broken = run(
        "manifest", "import", str(truncated), "-r", "factory-reg", "--trust-signer", signer
    )
    assert broken.returncode == 1 and "truncated" in broken.stderr

    revoked = run(
        "ca",
        "signer",
        "revoke",
        "--batch",
        "b1",
        "--reason",
        "keyCompromise",
        "--server",
        server.url,
        "--dir",
        pki,
    )
    assert revoked.returncode == 0, revoked.stderr
    listed = httpx.get(
        f"{server.url}/ironcore/v1/revocations",
        headers={"Authorization": f"Bearer {server.token}"},
    ).json()["revokedSigners"]
    assert listed[0]["reason"] == "keyCompromise"
    assert listed[0]["subject"] == "CN=Acme Signer b1,O=Acme"

    crl = run("ca", "crl", "--dir", pki)
    assert crl.returncode == 0, crl.stderr
    revocation_list = x509.load_pem_x509_crl(crl.stdout.encode())
    assert len(revocation_list) == 1
    signers = run("--json", "ca", "signer", "list", "--dir", pki)
    assert json.loads(signers.stdout)["signers"][0]["revoked"] == "keyCompromise"


def test_clear_errors_without_a_server(tmp_path: Path) -> None:
    pki = str(tmp_path / "pki")
    missing = ironcore(None, tmp_path, "ca", "signer", "create", "--batch", "b1", "--dir", pki)
    assert missing.returncode == 1 and "ca init" in missing.stderr
    assert ironcore(None, tmp_path, "ca", "init", "--dir", pki).returncode == 0
    again = ironcore(None, tmp_path, "ca", "init", "--dir", pki)
    assert again.returncode == 1 and "already has a root CA" in again.stderr
    bad = ironcore(
        None,
        tmp_path,
        "factory",
        "reel",
        "--signer",
        "zz",
        "--count",
        "1",
        "--out",
        str(tmp_path / "r"),
        "--dir",
        pki,
    )
    assert bad.returncode == 1 and "no signer CA for batch 'zz'" in bad.stderr
