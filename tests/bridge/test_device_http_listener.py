"""The HTTP device bridge on a listener of its own (`--device-http-port`): its own address,
TLS with the bridges' certificate (the local CA devices trust) unless
`--insecure-device-http`, and device paths only: the admin API is not served there."""

from __future__ import annotations

import base64
import re
import ssl
from pathlib import Path

import httpx
import pytest

from tests.bridge.devices import PROJECT, create_device, create_registry, make_jwt, new_key
from tests.cli.test_cli import Cli
from tests.conftest import free_port, start_server, stop_server

pytestmark = pytest.mark.databases("sqlite")
DEVICE = f"/v1/projects/{PROJECT}/locations/us-central1/registries/reg-own/devices/dev-own"


def test_the_device_port_is_tls_and_devices_only(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(
        tmp_path / "data",
        extra=["--device-http-port", str(port), "--device-http-host", "127.0.0.1"],
    )
    try:
        create_registry(server, "reg-own")
        key = new_key()
        create_device(server, "reg-own", "dev-own", key)
        jwt = {"Authorization": f"Bearer {make_jwt(key)}"}
        body = {"binaryData": base64.b64encode(b"over tls").decode()}
        trusted = ssl.create_default_context(cafile=server.ca_file)
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trusted) as devices:
            published = devices.post(f"{DEVICE}:publishEvent", json=body, headers=jwt)
            assert published.status_code == 200, published.text
            # The admin API is not on the devices' port, whatever the token.
            admin = {"Authorization": f"Bearer {server.token}"}
            registries = f"/v1/projects/{PROJECT}/locations/us-central1/registries"
            listed = devices.get(registries, headers=admin)
            assert listed.status_code == 404, listed.text
        # Device paths moved off the admin API's listener.
        moved = httpx.post(f"{server.url}{DEVICE}:publishEvent", json=body, headers=jwt)
        assert moved.status_code == 405, moved.text
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"http://127.0.0.1:{port}{DEVICE}:publishEvent", json=body, headers=jwt)
        assert f"HTTP device bridge on https://127.0.0.1:{port}" in server.log.read_text()
        # The simulator's HTTP devices, told where the bridge is, trusting the local CA.
        simulated = Cli(server, tmp_path / "home").ok(
            *("--ca-file", str(server.ca_file), "simulate", "-r", "reg-sim", "--devices", "2"),
            *("--rate", "4", "--duration", "1", "--protocol", "http"),
            *("--device-url", f"https://127.0.0.1:{port}"),
        )
        sent = re.search(r"events\s+(\d+) sent, (\d+) acknowledged", simulated.out)
        assert sent is not None and int(sent[2]) > 0, simulated.out
    finally:
        stop_server(server)


def test_insecure_device_http_is_plain_and_warned(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(
        tmp_path / "data",
        extra=[
            *("--device-http-port", str(port), "--device-http-host", "127.0.0.1"),
            "--insecure-device-http",
        ],
    )
    try:
        create_registry(server, "reg-own")
        key = new_key()
        create_device(server, "reg-own", "dev-own", key)
        published = httpx.post(
            f"http://127.0.0.1:{port}{DEVICE}:publishEvent",
            json={"binaryData": base64.b64encode(b"in clear").decode()},
            headers={"Authorization": f"Bearer {make_jwt(key)}"},
        )
        assert published.status_code == 200, published.text
        assert "--insecure-device-http: device JWTs cross the network in clear" in (
            server.log.read_text()
        )
    finally:
        stop_server(server)
