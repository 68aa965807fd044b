"""Device clients other than the suite's paho-mqtt 2 against a real `ironcore serve` (SQLite):

- paho-mqtt 1.6.1, what Cloud IoT Core device code pinned (`paho-mqtt<2`). It cannot share a
  virtual environment with paho 2, so `make` installs it into `.venv/paho1` and the device runs
  as a subprocess in the style of Google's `cloudiot_mqtt_example.py`.
- Debian's `mosquitto_pub` / `mosquitto_sub` (package mosquitto-clients).

Both with ES256 and RS256 device keys. When the client is missing the tests skip, or fail when
IRONCORE_REQUIRE_SERVICES=1 (as CI sets).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.bridge.devices import (
    admin,
    client_id,
    create_device,
    create_registry,
    make_jwt,
)
from tests.conftest import (
    REQUIRE_SERVICES,
    Database,
    Server,
    events_in_log,
    wait_for,
)
from tests.interop.processes import ReportingProcess
from tests.keys import PrivateKey, es256_key, rsa_key

# What is under test is the clients; the database is the other bridge tests' business.
pytestmark = pytest.mark.databases("sqlite")

PAHO1 = Path(__file__).resolve().parents[2] / ".venv" / "paho1"
REG = "reg-clients"
# JWT algorithm → (credential format, key factory)
KEYS: dict[str, tuple[str, Callable[[], PrivateKey]]] = {
    "ES256": ("ES256_PEM", es256_key),
    "RS256": ("RSA_PEM", rsa_key),
}

# The device, as Google's python sample wrote it (paho-mqtt 1.x API), reporting what it sees
# as JSON lines on stdout.
DEVICE_SCRIPT = r"""
import json
import ssl
import sys
import threading

import paho.mqtt
import paho.mqtt.client as mqtt

assert paho.mqtt.__version__ == "1.6.1", paho.mqtt.__version__

client_id, password, ca_certs, port, device_id = sys.argv[1:6]
lock = threading.Lock()
got_command = threading.Event()


def emit(**record):
    with lock:
        print(json.dumps(record), flush=True)


def on_connect(unused_client, unused_userdata, unused_flags, rc):
    emit(event="connect", rc=rc, text=mqtt.connack_string(rc))


def on_disconnect(unused_client, unused_userdata, rc):
    emit(event="disconnect", rc=rc)


def on_subscribe(unused_client, unused_userdata, mid, granted_qos):
    emit(event="suback", mid=mid, granted=list(granted_qos))


def on_publish(unused_client, unused_userdata, mid):
    emit(event="puback", mid=mid)


def on_message(unused_client, unused_userdata, message):
    emit(
        event="message",
        topic=message.topic,
        payload=message.payload.decode("utf-8", "replace"),
        qos=message.qos,
    )
    if "/commands" in message.topic:
        got_command.set()


client = mqtt.Client(client_id=client_id)
client.username_pw_set(username="unused", password=password)
client.tls_set(ca_certs=ca_certs, tls_version=ssl.PROTOCOL_TLSv1_2)
client.on_connect = on_connect
client.on_disconnect = on_disconnect
client.on_subscribe = on_subscribe
client.on_publish = on_publish
client.on_message = on_message
client.connect("localhost", int(port), keepalive=60)
# As the sample does: the subscriptions go out right behind CONNECT, before CONNACK is read.
_, config_mid = client.subscribe("/devices/{}/config".format(device_id), qos=1)
_, commands_mid = client.subscribe("/devices/{}/commands/#".format(device_id), qos=0)
emit(event="subscribing", config_mid=config_mid, commands_mid=commands_mid)
client.loop_start()

for kind, payload in (("events", "paho1 event"), ("state", "paho1 state")):
    info = client.publish("/devices/{}/{}".format(device_id, kind), payload, qos=1)
    emit(event="published", kind=kind, mid=info.mid)
    info.wait_for_publish(timeout=10)
emit(event="ready")

got_command.wait(timeout=30)
client.disconnect()
client.loop_stop()
emit(event="done", got_command=got_command.is_set())
sys.exit(0 if got_command.is_set() else 3)
"""


def need(what: str, present: bool, how: str) -> None:
    if present:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is missing and IRONCORE_REQUIRE_SERVICES=1 ({how})")
    pytest.skip(f"{what} is missing ({how})")


@pytest.fixture
def paho1() -> Path:
    need("paho-mqtt 1.6.1", (PAHO1 / "paho" / "mqtt" / "client.py").exists(), "run `make`")
    return PAHO1


@pytest.fixture
def mosquitto_clients() -> None:
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        need(tool, shutil.which(tool) is not None, "apt-get install mosquitto-clients")


def sqlite(server: Server) -> Database:
    return Database(f"sqlite:///{server.data_dir / 'ironcore.db'}", None)


def device_with_key(server: Server, device_id: str, alg: str) -> PrivateKey:
    key_format, factory = KEYS[alg]
    key = factory()
    create_device(server, REG, device_id, key, key_format=key_format)
    return key


@pytest.mark.parametrize("alg", list(KEYS))
def test_paho_1_6_1_device(paho1: Path, bridge: Server, tmp_path: Path, alg: str) -> None:
    create_registry(bridge, REG)
    key = device_with_key(bridge, "dev-paho1", alg)
    script = tmp_path / "cloudiot_device.py"
    script.write_text(DEVICE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(paho1)}
    args = [sys.executable, str(script), client_id(REG, "dev-paho1"), make_jwt(key, alg=alg)]
    args += [str(bridge.ca_file), str(bridge.mqtt_port), "dev-paho1"]
    device = ReportingProcess(args, env, "paho 1.6.1 device")
    try:
        subscribing = device.expect("subscribing")
        assert device.expect("connect")["rc"] == 0
        config_suback = device.expect("suback", mid=subscribing["config_mid"])
        assert config_suback["granted"] == [1]
        assert device.expect("suback", mid=subscribing["commands_mid"])["granted"] == [0]
        # The current config (version 1, empty) comes right after the SUBACK, at QoS 1.
        config = device.expect("message", topic="/devices/dev-paho1/config")
        assert (config["payload"], config["qos"]) == ("", 1)
        assert device.index(config) > device.index(config_suback)
        for kind in ("events", "state"):
            published = device.expect("published", kind=kind)
            device.expect("puback", mid=published["mid"])
        device.expect("ready")

        with admin(bridge) as api:
            url = f"/registries/{REG}/devices/dev-paho1"

            def acked() -> dict[str, Any] | None:
                versions = api.get(f"{url}/configVersions").json()["deviceConfigs"]
                return versions[0] if "deviceAckTime" in versions[0] else None

            # The device's PUBACK of version 1 acknowledged it.
            assert wait_for(acked, what="config version 1 acknowledged")["version"] == "1"

            r = api.post(
                f"{url}:modifyCloudToDeviceConfig",
                json={"binaryData": base64.b64encode(b"pushed while connected").decode()},
            )
            assert r.status_code == 200, r.text
            pushed = device.expect("message", payload="pushed while connected")
            assert (pushed["topic"], pushed["qos"]) == ("/devices/dev-paho1/config", 1)

            r = api.post(
                f"{url}:sendCommandToDevice",
                json={"binaryData": base64.b64encode(b"reboot").decode()},
            )
            assert r.status_code == 200, r.text
            command = device.expect("message", topic="/devices/dev-paho1/commands")
            assert (command["payload"], command["qos"]) == ("reboot", 0)

        assert device.expect("done")["got_command"] is True
        assert device.process.wait(timeout=10) == 0, device.stderr()
        assert not [r for r in device.records if r["event"] == "disconnect" and r["rc"] != 0]
    finally:
        device.stop()

    logged = {data: attrs for _topic, data, attrs in events_in_log(bridge, sqlite(bridge))}
    assert logged[b"paho1 event"]["deviceId"] == "dev-paho1"
    assert logged[b"paho1 state"]["deviceId"] == "dev-paho1"


def mosquitto(tool: str, server: Server, device_id: str, token: str, *args: str) -> Any:
    command = [shutil.which(tool) or tool, "-h", "localhost", "-p", str(server.mqtt_port)]
    command += ["--cafile", str(server.ca_file), "-i", client_id(REG, device_id)]
    command += ["-u", "unused", "-P", token, "-V", "mqttv311", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("alg", list(KEYS))
def test_mosquitto_clients(mosquitto_clients: None, bridge: Server, alg: str) -> None:
    create_registry(bridge, REG)
    key = device_with_key(bridge, "dev-mosq", alg)
    token = make_jwt(key, alg=alg)

    sent = mosquitto(
        "mosquitto_pub", bridge, "dev-mosq", token, "-t", "/devices/dev-mosq/events",
        "-m", "hello", "-q", "1",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    logged = events_in_log(bridge, sqlite(bridge))
    assert [(data, attrs["deviceId"]) for _topic, data, attrs in logged] == [(b"hello", "dev-mosq")]

    with admin(bridge) as api:
        r = api.post(
            f"/registries/{REG}/devices/dev-mosq:modifyCloudToDeviceConfig",
            json={"binaryData": base64.b64encode(b"config for mosquitto").decode()},
        )
        assert r.status_code == 200, r.text
    got = mosquitto(
        "mosquitto_sub", bridge, "dev-mosq", token, "-t", "/devices/dev-mosq/config",
        "-q", "1", "-C", "1", "-W", "10",
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert got.stdout == "config for mosquitto\n"

    stranger = make_jwt(KEYS[alg][1](), alg=alg)
    refused = mosquitto(
        "mosquitto_pub", bridge, "dev-mosq", stranger, "-t", "/devices/dev-mosq/events",
        "-m", "not me", "-q", "1",
    )  # fmt: skip
    assert refused.returncode != 0
    assert "not authorised" in refused.stderr.lower(), refused.stderr
    assert len(events_in_log(bridge, sqlite(bridge))) == 1
