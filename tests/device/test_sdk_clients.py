"""The device SDK against a real server: a software secure element signs the JWTs, the MQTT
client keeps its connection (fresh tokens, backoff), the HTTP client and gateway mode work."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from ironcore.device.http import DeviceHttpClient, DeviceHttpError
from ironcore.device.mqtt import DeviceClient, DeviceName, Endpoint
from ironcore.device.secure_element import SecureElement, public_key_from_raw
from ironcore.device.software_element import SoftwareElement
from ironcore.device.tokens import TokenSource, es256_jwt
from tests.bridge.devices import LOCATION, PROJECT, admin, create_device, create_registry
from tests.conftest import Server
from tests.keys import public_pem, rsa_key


@pytest.fixture(scope="module")
def server(module_server: Server) -> Server:
    """The module's server, with the registry its tests put their devices in."""
    create_registry(module_server, "reg-sdk")
    return module_server


def element_pem(element: SecureElement, slot: int = 0) -> str:
    key = public_key_from_raw(element.get_pubkey(slot))
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def register(
    server: Server, device_id: str, pem: str, fmt: str = "ES256_PEM", **extra: object
) -> None:
    with admin(server) as api:
        r = api.post(
            "/registries/reg-sdk/devices",
            json={
                "id": device_id,
                "credentials": [{"publicKey": {"format": fmt, "key": pem}}],
                **extra,
            },
        )
        assert r.status_code == 200, r.text


def make_element(tmp_path: Path, name: str) -> SoftwareElement:
    return SoftwareElement.provision(tmp_path / f"{name}.se")


def test_mqtt_client_with_secure_element(server: Server, tmp_path: Path) -> None:
    element = make_element(tmp_path, "a")
    register(server, "sdk-mqtt", element_pem(element))
    minted: list[float] = []

    def mint(now: float) -> str:
        minted.append(now)
        return es256_jwt(element, 0, PROJECT, now)

    tokens = TokenSource(mint)
    client = DeviceClient(
        Endpoint("localhost", server.mqtt_port, str(server.ca_file)),
        DeviceName(PROJECT, LOCATION, "reg-sdk", "sdk-mqtt"),
        tokens,
    )
    configs: queue.Queue[bytes] = queue.Queue()
    commands: queue.Queue[tuple[str, bytes]] = queue.Queue()
    client.on_config = lambda _device, payload: configs.put(payload)
    client.on_command = lambda _device, sub, payload: commands.put((sub, payload))
    client.start()
    try:
        assert configs.get(timeout=10) == b""
        client.publish_event(b"hello", subfolder="sensors")
        client.publish_state(b"ok")
        with admin(server) as api:
            api.post(
                "/registries/reg-sdk/devices/sdk-mqtt:modifyCloudToDeviceConfig",
                json={"binaryData": "bmV3"},
            ).raise_for_status()
            assert configs.get(timeout=10) == b"new"
            api.post(
                "/registries/reg-sdk/devices/sdk-mqtt:sendCommandToDevice",
                json={"binaryData": "Z28=", "subfolder": "x/y"},
            ).raise_for_status()
            assert commands.get(timeout=10) == ("x/y", b"go")

        # A planned reconnect presents a newly minted token, and subscriptions come back.
        assert len(minted) == 1
        client.reconnect_now()
        deadline = time.monotonic() + 20
        while not (client.connects == 2 and client.connected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.connects == 2 and client.connected
        assert len(minted) == 2
        assert configs.get(timeout=10) == b"new"
        client.publish_event(b"after reconnect")
    finally:
        client.stop()


def test_client_comes_back_after_being_dropped(server: Server, tmp_path: Path) -> None:
    element = make_element(tmp_path, "b")
    register(server, "sdk-back", element_pem(element))
    client = DeviceClient(
        Endpoint("localhost", server.mqtt_port, str(server.ca_file)),
        DeviceName(PROJECT, LOCATION, "reg-sdk", "sdk-back"),
        TokenSource.for_element(element, PROJECT),
    )
    client.start()
    try:
        with admin(server) as api:
            # Blocked: the bridge drops the device and refuses it; unblocked: it returns.
            api.patch(
                "/registries/reg-sdk/devices/sdk-back",
                params={"updateMask": "blocked"},
                json={"blocked": True},
            )
            deadline = time.monotonic() + 5
            while client.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not client.connected
            api.patch(
                "/registries/reg-sdk/devices/sdk-back",
                params={"updateMask": "blocked"},
                json={"blocked": False},
            )
        assert client.wait_connected(30), "the client did not reconnect"
        client.publish_event(b"back")
    finally:
        client.stop()


def test_rs256_and_http_client(server: Server) -> None:
    key = rsa_key()
    register(server, "sdk-http", public_pem(key), fmt="RSA_PEM")
    client = DeviceHttpClient(
        server.url,
        DeviceName(PROJECT, LOCATION, "reg-sdk", "sdk-http"),
        TokenSource.for_rsa_key(key, PROJECT),
    )
    try:
        client.publish_event(b"over http", subfolder="sub")
        client.set_state(b"state")
        config = client.get_config()
        assert (config.version, config.data) == (1, b"")
        assert client.get_config(local_version=1).data is None
        with pytest.raises(DeviceHttpError) as refused:
            client.get_config(local_version=5)
        assert refused.value.status == "OUT_OF_RANGE"
    finally:
        client.close()


def test_gateway_mode(server: Server, tmp_path: Path) -> None:
    gateway_element = make_element(tmp_path, "gw")
    register(
        server,
        "sdk-gateway",
        element_pem(gateway_element),
        gatewayConfig={"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"},
    )
    create_device(server, "reg-sdk", "sdk-behind")
    with admin(server) as api:
        api.post(
            "/registries/reg-sdk:bindDeviceToGateway",
            json={"gatewayId": "sdk-gateway", "deviceId": "sdk-behind"},
        ).raise_for_status()
    gateway = DeviceClient(
        Endpoint("localhost", server.mqtt_port, str(server.ca_file)),
        DeviceName(PROJECT, LOCATION, "reg-sdk", "sdk-gateway"),
        TokenSource.for_element(gateway_element, PROJECT),
    )
    errors: queue.Queue[dict[str, object]] = queue.Queue()
    configs: queue.Queue[tuple[str, bytes]] = queue.Queue()
    gateway.on_gateway_error = errors.put
    gateway.on_config = lambda device, payload: configs.put((device, payload))
    gateway.start()
    try:
        gateway.attach("sdk-behind")
        gateway.publish_event(b"relayed", device_id="sdk-behind")
        seen = {configs.get(timeout=10)[0] for _ in range(2)}
        assert seen == {"sdk-gateway", "sdk-behind"}
        gateway.attach("not-bound-device")
        error = errors.get(timeout=10)
        assert error["error_type"] == "GATEWAY_ATTACHMENT_ERROR"
        assert error["device_id"] == "not-bound-device"
        gateway.detach("sdk-behind")
        with admin(server) as api:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                got = api.get("/registries/reg-sdk/devices/sdk-behind").json()
                if got["gatewayConfig"].get("lastAccessedGatewayId") == "sdk-gateway":
                    break
                time.sleep(0.1)
            assert got["gatewayConfig"]["lastAccessedGatewayId"] == "sdk-gateway"
    finally:
        gateway.stop()
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_mqtt_client_with_a_softhsm_token(server: Server, softhsm: object) -> None:
    from ironcore.device.pkcs11_element import Pkcs11Element, init_softhsm_token
    from ironcore.device.secure_element import new_serial_number
    from tests.softhsm import PIN, SoftHsm

    assert isinstance(softhsm, SoftHsm)
    serial = new_serial_number()
    init_softhsm_token(serial, PIN, PIN)
    element = Pkcs11Element.provision(softhsm.module, serial, PIN)
    key = public_key_from_raw(element.get_pubkey(0))
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    register(server, "sdk-hsm", pem)
    client = DeviceClient(
        Endpoint("localhost", server.mqtt_port, str(server.ca_file)),
        DeviceName(PROJECT, LOCATION, "reg-sdk", "sdk-hsm"),
        TokenSource.for_element(element, PROJECT),
    )
    client.start()
    try:
        client.publish_event(b"signed inside SoftHSM2")
    finally:
        client.stop()
