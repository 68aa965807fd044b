"""The admin API over HTTPS (`--api-tls`, `--api-cert/--api-key`), with the CLI trusting the
local CA (google-cloud-iot over HTTPS: tests/interop/test_google_cloud_iot.py); and the
loopback default: another address without TLS refuses to start unless `--insecure-api`."""

from __future__ import annotations

import logging
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from ironcore.bridge.certificates import local_certificates
from ironcore.runtime.primary import api_tls_files
from ironcore.runtime.process import CannotStart
from ironcore.settings import Settings
from tests.cli.test_cli import Cli
from tests.conftest import Server, start_server, stop_server, wait_for

pytestmark = pytest.mark.databases("sqlite")
PARENT = "projects/p1/locations/us-central1"


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[Server]:
    """A server whose admin API is TLS with the bridges' certificate (the local CA's)."""
    running = start_server(tmp_path / "data", extra=["--api-tls"])
    yield running
    stop_server(running)


def test_the_cli_over_https_trusts_the_local_ca(https_server: Server, tmp_path: Path) -> None:
    assert https_server.url.startswith("https://")
    cli = Cli(https_server, tmp_path / "home")
    ca = str(https_server.ca_file)
    cli.ok("--ca-file", ca, "registries", "create", "reg-tls")
    # Without --ca-file, the CA of the server on this machine (its data directory) is trusted.
    env = cli.env(https_server.token, IRONCORE_DATA_DIR=str(https_server.data_dir))
    listed = cli.json("registries", "list", env=env)
    assert [r["id"] for r in listed["deviceRegistries"]] == ["reg-tls"]
    # Trusting nothing but the system's CAs, the certificate is refused, in one line.
    refused = cli.run("registries", "list")
    assert "CERTIFICATE_VERIFY_FAILED" in refused.error_line, refused.err
    missing = cli.run("--ca-file", str(tmp_path / "nothing.crt"), "registries", "list")
    assert "--ca-file" in missing.error_line
    # Plain HTTP on the TLS port gets no answer the client takes for one.
    plain = cli.run("registries", "list", server=https_server.url.replace("https", "http"))
    assert plain.code == 1
    # The simulator registers and publishes over HTTPS too (HTTP devices on the API's port).
    simulated = cli.ok(
        *("--ca-file", ca, "simulate", "-r", "reg-sim", "--devices", "2", "--rate", "4"),
        *("--duration", "1", "--protocol", "http"),
    )
    sent = re.search(r"events\s+(\d+) sent, (\d+) acknowledged", simulated.out)
    assert sent is not None and int(sent[2]) > 0, simulated.out
    assert "ironcore serving the admin API on https://127.0.0.1" in https_server.log.read_text()


def served_certificate(server: Server) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        ssl.get_server_certificate(("127.0.0.1", server.port)).encode()
    )


def test_the_operators_certificate_and_sighup(tmp_path: Path) -> None:
    first = local_certificates(tmp_path / "first", [])
    second = local_certificates(tmp_path / "second", [])
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    cert.write_bytes(first[0].read_bytes())
    key.write_bytes(first[1].read_bytes())
    server = start_server(tmp_path / "data", extra=["--api-cert", str(cert), "--api-key", str(key)])
    try:
        assert served_certificate(server) == x509.load_pem_x509_certificate(cert.read_bytes())
        trusted = httpx.get(
            f"{server.url}/v1/{PARENT}/registries",
            headers={"Authorization": f"Bearer {server.token}"},
            verify=ssl.create_default_context(cafile=tmp_path / "first" / "ca.crt"),
        )
        assert trusted.status_code == 200, trusted.text
        cert.write_bytes(second[0].read_bytes())
        key.write_bytes(second[1].read_bytes())
        os.kill(server.process.pid, signal.SIGHUP)
        wanted = x509.load_pem_x509_certificate(cert.read_bytes())
        wait_for(lambda: served_certificate(server) == wanted, what="the new API certificate")
    finally:
        stop_server(server)


def test_another_address_without_tls_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "ironcore", "serve", "--data-dir", str(tmp_path / "data")),
            *("--api-host", "192.0.2.1", "--mqtt-port", "0", "--grpc-port", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")},
    )
    assert done.returncode == 1, done.stderr
    assert "--api-host 192.0.2.1 is not a loopback address" in done.stderr
    assert "--insecure-api" in done.stderr
    # Refused before the database was opened.
    assert not (tmp_path / "data" / "ironcore.db").exists()


def test_which_api_gets_tls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = Settings(data_dir=tmp_path)
    assert base.api_host == "127.0.0.1"
    # Devices reach their own port from the network: the API's is loopback.
    assert (base.device_http_host, base.device_http_port) == ("0.0.0.0", 8081)
    assert api_tls_files(base) is None
    with pytest.raises(CannotStart, match="--api-tls"):
        api_tls_files(Settings(data_dir=tmp_path, api_host="0.0.0.0"))
    with caplog.at_level(logging.WARNING):
        assert api_tls_files(Settings(data_dir=tmp_path, api_host="::", insecure_api=True)) is None
    assert "--insecure-api: the admin API on :::8080 is plain HTTP" in caplog.text
    own = (tmp_path / "a.crt", tmp_path / "a.key")
    mine = Settings(data_dir=tmp_path, api_host="0.0.0.0", api_cert=own[0], api_key=own[1])
    assert api_tls_files(mine) == own
    generated = api_tls_files(Settings(data_dir=tmp_path, api_host="0.0.0.0", api_tls=True))
    assert generated == (tmp_path / "tls" / "server.crt", tmp_path / "tls" / "server.key")
