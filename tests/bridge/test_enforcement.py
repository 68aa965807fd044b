"""Live enforcement on the MQTT bridge: admin changes reach connected devices within a second.

A real `ironcore serve` (SQLite), real TLS and paho-mqtt 2 devices. Each disconnect is timed
from the admin change (or the credential's expiry) to the device seeing its connection close.
Also: SIGHUP reloads the TLS certificate without dropping anyone, SIGTERM says goodbye to every
device, exits 0 and keeps the bookkeeping of the last second.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.bridge.devices import (
    Device,
    admin,
    assert_refused,
    connect,
    create_device,
    create_registry,
    disable_mqtt,
    last_error,
    make_jwt,
    new_key,
    online,
)
from tests.conftest import Server, start_server, stop_server, wait_for
from tests.keys import PrivateKey, localhost_certificate, public_pem

# Timing against the live bridge; the database adds nothing the other bridge tests miss.
pytestmark = pytest.mark.databases("sqlite")

REG = "reg-enf"
# What every disconnect must beat, from the admin change to the device seeing it.
LIMIT = 1.0


def credential(key: PrivateKey, expires: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"publicKey": {"format": "ES256_PEM", "key": public_pem(key)}}
    if expires is not None:
        when = dt.datetime.fromtimestamp(expires, dt.UTC)
        body["expirationTime"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return body


def disconnected_after(device: Device, started: float, timeout: float = 5.0) -> float:
    device.wait_disconnect(timeout=timeout)
    return time.monotonic() - started


def disconnected_on_expiry(server: Server, device: Device, expires: float) -> None:
    """Device "dev" was disconnected within LIMIT of its credential's expiry, saying why."""
    device.wait_disconnect(timeout=5)
    late = time.time() - expires
    assert 0 <= late < LIMIT, f"disconnected {late:.2f} s after the credential expired"
    last_error(server, REG, "dev", "expired")


def stays_connected(device: Device, device_id: str) -> None:
    """The device still gets PUBACKs and its connection never closed."""
    device.publish(f"/devices/{device_id}/events", b"still here")
    assert device.disconnects.empty()


def patch_device(server: Server, device_id: str, mask: str, body: dict[str, Any]) -> None:
    with admin(server) as api:
        r = api.patch(
            f"/registries/{REG}/devices/{device_id}", params={"updateMask": mask}, json=body
        )
        assert r.status_code == 200, r.text


def test_removing_the_credential_in_use_disconnects(bridge: Server) -> None:
    create_registry(bridge, REG)
    used, other, replacement = new_key(), new_key(), new_key()
    create_device(bridge, REG, "dev", credentials=[credential(used), credential(other)])
    device = online(bridge, REG, "dev", used)
    try:
        # Swapping the other credential keeps the one the device connected with: it stays. The
        # PATCH answers once connections are revalidated, so a PUBACK now shows it stayed.
        patch_device(
            bridge,
            "dev",
            "credentials",
            {"credentials": [credential(used), credential(replacement)]},
        )
        stays_connected(device, "dev")

        started = time.monotonic()
        patch_device(bridge, "dev", "credentials", {"credentials": [credential(replacement)]})
        assert disconnected_after(device, started) < LIMIT
        last_error(bridge, REG, "dev", "credential the device connected with was removed")
        assert_refused(bridge, REG, "dev", used)
    finally:
        device.client.loop_stop()


def test_credential_expiring_while_connected_disconnects(bridge: Server) -> None:
    create_registry(bridge, REG)
    key = new_key()
    expires = time.time() + 2.5
    create_device(bridge, REG, "dev", credentials=[credential(key, expires)])
    device = online(bridge, REG, "dev", key)
    try:
        disconnected_on_expiry(bridge, device, expires)
    finally:
        device.client.loop_stop()


def test_expiry_set_on_a_connected_device_disconnects_it(bridge: Server) -> None:
    create_registry(bridge, REG)
    key = new_key()
    create_device(bridge, REG, "dev", credentials=[credential(key)])
    device = online(bridge, REG, "dev", key)
    try:
        expires = time.time() + 2.0
        patch_device(bridge, "dev", "credentials", {"credentials": [credential(key, expires)]})
        stays_connected(device, "dev")
        disconnected_on_expiry(bridge, device, expires)
    finally:
        device.client.loop_stop()


def test_disabling_mqtt_on_the_registry_disconnects_its_devices(bridge: Server) -> None:
    create_registry(bridge, REG)
    create_registry(bridge, "reg-bystander")
    key = new_key()
    for device_id in ("dev-1", "dev-2"):
        create_device(bridge, REG, device_id, key)
    create_device(bridge, "reg-bystander", "dev-3", key)
    devices = [online(bridge, REG, "dev-1", key), online(bridge, REG, "dev-2", key)]
    bystander = connect(bridge, "reg-bystander", "dev-3", make_jwt(key))
    try:
        started = time.monotonic()
        disable_mqtt(bridge, REG)
        for device in devices:
            assert disconnected_after(device, started) < LIMIT
        last_error(bridge, REG, "dev-1", "MQTT was disabled")
        assert_refused(bridge, REG, "dev-1", key)
        stays_connected(bystander, "dev-3")
    finally:
        for device in devices:
            device.client.loop_stop()
        bystander.close()


def test_deleting_the_device_disconnects_it(bridge: Server) -> None:
    create_registry(bridge, REG)
    key = new_key()
    create_device(bridge, REG, "dev", key)
    device = online(bridge, REG, "dev", key)
    try:
        started = time.monotonic()
        with admin(bridge) as api:
            r = api.delete(f"/registries/{REG}/devices/dev")
            assert r.status_code == 200, r.text
        assert disconnected_after(device, started) < LIMIT
        assert_refused(bridge, REG, "dev", key)
    finally:
        device.client.loop_stop()


def test_send_command_needs_a_connected_subscribed_device(bridge: Server) -> None:
    create_registry(bridge, REG)
    key = new_key()
    create_device(bridge, REG, "dev", key)
    command = {"binaryData": base64.b64encode(b"reboot").decode()}
    with admin(bridge) as api:

        def send() -> Any:
            return api.post(f"/registries/{REG}/devices/dev:sendCommandToDevice", json=command)

        r = send()
        assert r.status_code == 400, r.text
        assert r.json()["error"]["status"] == "FAILED_PRECONDITION"

        device = online(bridge, REG, "dev", key, subscribe=False)
        try:
            r = send()
            assert r.status_code == 400, r.text
            assert r.json()["error"]["status"] == "FAILED_PRECONDITION"
            assert "commands" in r.json()["error"]["message"]

            device.client.subscribe("/devices/dev/commands/#", qos=1)
            r = wait_for(lambda: (r := send()).status_code == 200 and r, what="command accepted")
            message = device.next_message()
            assert (message.topic, message.payload) == ("/devices/dev/commands", b"reboot")
        finally:
            device.close()
        assert device.wait_disconnect() == 0
        r = wait_for(lambda: (r := send()).status_code == 400 and r, what="command refused")
        assert r.json()["error"]["status"] == "FAILED_PRECONDITION"


def served_serial(server: Server) -> int:
    """The serial number of the certificate a new TLS handshake with the bridge gets."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    with (
        socket.create_connection(("127.0.0.1", server.mqtt_port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def issue_server_certificate(tls_dir: Path, write_key: bool = True) -> int:
    """A new server key and certificate from the data directory's CA, written in place (without
    `write_key`, the certificate alone: a pair that does not match)."""
    ca_cert = x509.load_pem_x509_certificate((tls_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((tls_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = localhost_certificate(key, ca_cert.subject, ca_key, days=90)
    pem = serialization.Encoding.PEM
    if write_key:
        (tls_dir / "server.key").write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    (tls_dir / "server.crt").write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    return int(cert.serial_number)


def test_sighup_reloads_the_certificate_without_dropping_devices(bridge: Server) -> None:
    create_registry(bridge, REG)
    key = new_key()
    create_device(bridge, REG, "dev", key)
    device = online(bridge, REG, "dev", key)
    try:
        old = served_serial(bridge)
        # A certificate without its key: the reload is refused and the old pair keeps serving.
        issue_server_certificate(bridge.data_dir / "tls", write_key=False)
        os.kill(bridge.process.pid, signal.SIGHUP)
        wait_for(
            lambda: "still serving the previous one" in bridge.log.read_text(),
            what="the refused reload",
        )
        assert served_serial(bridge) == old

        new = issue_server_certificate(bridge.data_dir / "tls")
        assert new != old
        os.kill(bridge.process.pid, signal.SIGHUP)
        wait_for(lambda: served_serial(bridge) == new, what="the new certificate being served")
        stays_connected(device, "dev")
        # A device connecting now verifies the new certificate against the same CA.
        fresh = connect(bridge, REG, "dev-2", make_jwt(key), wait=False)
        assert fresh.wait_connack() == 5  # unknown device, but the TLS handshake went through
        fresh.client.loop_stop()
        assert bridge.process.poll() is None
    finally:
        device.close()


def test_sigterm_disconnects_devices_flushes_bookkeeping_and_exits_0(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    restarted: Server | None = None
    try:
        create_registry(server, REG)
        key = new_key()
        create_device(server, REG, "dev", key)
        device = online(server, REG, "dev", key)
        device.publish("/devices/dev/events", b"first")
        with admin(server) as api:

            def flushed() -> str | None:
                got = api.get(f"/registries/{REG}/devices/dev").json()
                when: str = got["lastEventTime"]
                return when if when != "1970-01-01T00:00:00Z" else None

            # Bookkeeping was just flushed; the next periodic flush is about a second away.
            first = wait_for(flushed, what="the first lastEventTime")
        before_last = time.time()
        device.publish("/devices/dev/events", b"last")
        assert stop_server(server) == 0
        device.wait_disconnect(timeout=5)
        device.client.loop_stop()

        restarted = start_server(data)
        with admin(restarted) as api:
            got = api.get(f"/registries/{REG}/devices/dev").json()
        last = dt.datetime.fromisoformat(got["lastEventTime"].replace("Z", "+00:00"))
        assert got["lastEventTime"] != first
        assert last.timestamp() >= before_last - 0.05
        assert "shutting down" in got["lastErrorStatus"]["message"]
    finally:
        if server.process.poll() is None:
            stop_server(server)
        if restarted is not None:
            stop_server(restarted)
