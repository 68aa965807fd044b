"""Google's Cloud IoT Core end-to-end example, both halves, against a real ironcore.

The device is `cloudiot_pubsub_example_mqtt_device.py` (paho-mqtt 1.6.1, a JWT from its RSA
key, telemetry every interval, the fan switched by its config); the backend is
`cloudiot_pubsub_example_server.py` (`google-cloud-pubsub`'s `subscribe()` on the telemetry
subscription, configs pushed back through `googleapiclient.discovery` with a service-account
key file). Both are restated here in Python 3, as the samples' own logic; what changes for
ironcore is only what a team would change: the backend's discovery URL, PUBSUB_EMULATOR_HOST and
GOOGLE_APPLICATION_CREDENTIALS (a key file `ironcore service-accounts keys create` wrote); the
device's bridge host, port and CA file. The device reports every second in the sample; here
every 0.1 s, so that the fan goes on and off again within seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from tests.bridge.devices import LOCATION, PROJECT, admin, create_device
from tests.conftest import Database, Server, free_port, start_server, stop_server
from tests.interop.processes import ReportingProcess
from tests.interop.test_mqtt_clients import PAHO1, need
from tests.keys import rsa_key

pytestmark = pytest.mark.databases("sqlite")

REGISTRY, DEVICE = "fans", "fan-1"
TOPIC = f"projects/{PROJECT}/topics/temperature"
SUBSCRIPTION = "temperature-backend"

DEVICE_SCRIPT = r"""
import argparse
import datetime
import json
import time

import jwt
import paho.mqtt.client as mqtt


def emit(**record):
    print(json.dumps(record), flush=True)


def create_jwt(project_id, private_key_file, algorithm):
    token = {
        "iat": datetime.datetime.utcnow(),
        "exp": datetime.datetime.utcnow() + datetime.timedelta(minutes=60),
        "aud": project_id,
    }
    with open(private_key_file, "r") as f:
        private_key = f.read()
    return jwt.encode(token, private_key, algorithm=algorithm)


class Device(object):
    def __init__(self):
        self.temperature = 0
        self.fan_on = False
        self.connected = False

    def update_sensor_data(self):
        if self.fan_on:
            self.temperature -= 1
        else:
            self.temperature += 1

    def wait_for_connection(self, timeout):
        total_time = 0
        while not self.connected and total_time < timeout:
            time.sleep(1)
            total_time += 1
        if not self.connected:
            raise RuntimeError("Could not connect to MQTT bridge.")

    def on_connect(self, unused_client, unused_userdata, unused_flags, rc):
        emit(event="connect", rc=rc)
        self.connected = True

    def on_disconnect(self, unused_client, unused_userdata, rc):
        self.connected = False

    def on_subscribe(self, unused_client, unused_userdata, unused_mid, granted_qos):
        emit(event="suback", granted=list(granted_qos))

    def on_message(self, unused_client, unused_userdata, message):
        payload = message.payload.decode("utf-8")
        emit(event="config", payload=payload, topic=message.topic)
        if not payload:
            return
        data = json.loads(payload)
        if data["fan_on"] != self.fan_on:
            self.fan_on = data["fan_on"]
            emit(event="fan", on=self.fan_on, temperature=self.temperature)


parser = argparse.ArgumentParser()
parser.add_argument("--project_id", required=True)
parser.add_argument("--registry_id", required=True)
parser.add_argument("--device_id", required=True)
parser.add_argument("--private_key_file", required=True)
parser.add_argument("--algorithm", choices=("RS256", "ES256"), required=True)
parser.add_argument("--cloud_region", default="us-central1")
parser.add_argument("--ca_certs", default="roots.pem")
parser.add_argument("--num_messages", type=int, default=100)
parser.add_argument("--mqtt_bridge_hostname", default="mqtt.googleapis.com")
parser.add_argument("--mqtt_bridge_port", type=int, default=8883)
parser.add_argument("--interval", type=float, default=1.0)
args = parser.parse_args()

client = mqtt.Client(
    client_id="projects/{}/locations/{}/registries/{}/devices/{}".format(
        args.project_id, args.cloud_region, args.registry_id, args.device_id
    )
)
client.username_pw_set(
    username="unused",
    password=create_jwt(args.project_id, args.private_key_file, args.algorithm),
)
client.tls_set(ca_certs=args.ca_certs)
device = Device()
client.on_connect = device.on_connect
client.on_disconnect = device.on_disconnect
client.on_subscribe = device.on_subscribe
client.on_message = device.on_message
client.connect(args.mqtt_bridge_hostname, args.mqtt_bridge_port)
client.loop_start()
mqtt_telemetry_topic = "/devices/{}/events".format(args.device_id)
mqtt_config_topic = "/devices/{}/config".format(args.device_id)
device.wait_for_connection(5)
client.subscribe(mqtt_config_topic, qos=1)
for _ in range(args.num_messages):
    device.update_sensor_data()
    payload = json.dumps({"temperature": device.temperature})
    client.publish(mqtt_telemetry_topic, payload, qos=1)
    time.sleep(args.interval)
client.disconnect()
client.loop_stop()
emit(event="done")
"""

BACKEND_SCRIPT = r"""
import argparse
import base64
import json
import os
import time
from threading import Lock

from google.cloud import pubsub
from google.oauth2 import service_account
from googleapiclient import discovery
from googleapiclient.errors import HttpError

API_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
API_VERSION = "v1"
# The one line a team changes: Google's was https://cloudiot.googleapis.com/$discovery/rest
DISCOVERY_API = os.environ["DISCOVERY_API"]
SERVICE_NAME = "cloudiot"
# The subscriber runs callbacks on a pool of threads: one line at a time.
emit_lock = Lock()


def emit(**record):
    with emit_lock:
        print(json.dumps(record), flush=True)


class Server(object):
    def __init__(self, service_account_json):
        credentials = service_account.Credentials.from_service_account_file(
            service_account_json
        ).with_scopes(API_SCOPES)
        discovery_url = "{}?version={}".format(DISCOVERY_API, API_VERSION)
        self._service = discovery.build(
            SERVICE_NAME,
            API_VERSION,
            discoveryServiceUrl=discovery_url,
            credentials=credentials,
            cache_discovery=False,
        )
        self._update_config_mutex = Lock()

    def _update_device_config(self, project_id, region, registry_id, device_id, data):
        if data["temperature"] < 0:
            config_data = {"fan_on": False}
        elif data["temperature"] > 10:
            config_data = {"fan_on": True}
        else:
            return
        body = {
            "version_to_update": 0,
            "binary_data": base64.b64encode(json.dumps(config_data).encode("utf-8")).decode(
                "ascii"
            ),
        }
        device_name = "projects/{}/locations/{}/registries/{}/devices/{}".format(
            project_id, region, registry_id, device_id
        )
        request = (
            self._service.projects()
            .locations()
            .registries()
            .devices()
            .modifyCloudToDeviceConfig(name=device_name, body=body)
        )
        self._update_config_mutex.acquire()
        try:
            answer = request.execute()
            emit(event="config", fan_on=config_data["fan_on"], version=answer["version"])
        except HttpError as e:
            emit(event="error", error=str(e))
        finally:
            self._update_config_mutex.release()

    def run(self, project_id, pubsub_subscription):
        subscriber = pubsub.SubscriberClient()
        subscription_path = subscriber.subscription_path(project_id, pubsub_subscription)

        def callback(message):
            try:
                data = json.loads(message.data.decode("utf-8"))
            except ValueError:
                message.ack()
                return
            emit(event="telemetry", data=data, attributes=dict(message.attributes))
            self._update_device_config(
                message.attributes["projectId"],
                message.attributes["deviceRegistryLocation"],
                message.attributes["deviceRegistryId"],
                message.attributes["deviceId"],
                data,
            )
            message.ack()

        subscriber.subscribe(subscription_path, callback=callback)
        emit(event="listening", subscription=subscription_path)
        while True:
            time.sleep(60)


parser = argparse.ArgumentParser()
parser.add_argument("--project_id", default=os.environ.get("GOOGLE_CLOUD_PROJECT"), required=True)
parser.add_argument("--pubsub_subscription", required=True)
parser.add_argument(
    "--service_account_json", default=os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
)
args = parser.parse_args()
Server(args.service_account_json).run(args.project_id, args.pubsub_subscription)
"""


def ironcore_cli(server: Server, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ironcore", "--server", server.url, "--project", PROJECT, *args],
        env={**os.environ, "IRONCORE_TOKEN": server.token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_samples_keep_a_fan_between_0_and_10_degrees(
    tmp_path: Path, database: Database
) -> None:
    need("paho-mqtt 1.6.1", (PAHO1 / "paho" / "mqtt" / "client.py").exists(), "run `make`")
    emulator_port = free_port()
    server = start_server(
        tmp_path / "data", database, extra=["--pubsub-emulator-port", str(emulator_port)]
    )
    processes: list[ReportingProcess] = []
    try:
        with admin(server) as api:
            registry = {
                "id": REGISTRY,
                "eventNotificationConfigs": [{"pubsubTopicName": TOPIC}],
            }
            assert api.post("/registries", json=registry).status_code == 200
        key = rsa_key()
        create_device(server, REGISTRY, DEVICE, key, key_format="RSA_PEM")
        key_file = tmp_path / "rsa_private.pem"
        key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        subscription = httpx.put(
            f"{server.url}/v1/projects/{PROJECT}/subscriptions/{SUBSCRIPTION}",
            json={"topic": TOPIC},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert subscription.status_code == 200, subscription.text

        # The backend's service account, as an operator makes it: an editor of Cloud IoT
        # devices, its key file written once.
        ironcore_cli(
            server, "service-accounts", "create", "fan-backend", "--role", "roles/cloudiot.editor"
        )
        account_file = tmp_path / "fan-backend.json"
        ironcore_cli(
            server, "service-accounts", "keys", "create", "fan-backend", "--out", str(account_file)
        )
        assert account_file.stat().st_mode & 0o777 == 0o600

        backend_script = tmp_path / "cloudiot_pubsub_example_server.py"
        backend_script.write_text(BACKEND_SCRIPT)
        backend_env = {
            **os.environ,
            "DISCOVERY_API": f"{server.url}/$discovery/rest",
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{emulator_port}",
            "GOOGLE_APPLICATION_CREDENTIALS": str(account_file),
        }
        backend = ReportingProcess(
            [
                sys.executable,
                str(backend_script),
                "--project_id",
                PROJECT,
                "--pubsub_subscription",
                SUBSCRIPTION,
            ],
            backend_env,
            "backend sample",
        )
        processes.append(backend)
        backend.expect("listening", timeout=30)

        device_script = tmp_path / "cloudiot_pubsub_example_mqtt_device.py"
        device_script.write_text(DEVICE_SCRIPT)
        device = ReportingProcess(
            [
                sys.executable,
                str(device_script),
                "--project_id",
                PROJECT,
                "--registry_id",
                REGISTRY,
                "--device_id",
                DEVICE,
                "--private_key_file",
                str(key_file),
                "--algorithm",
                "RS256",
                "--cloud_region",
                LOCATION,
                "--ca_certs",
                str(server.ca_file),
                "--mqtt_bridge_hostname",
                "localhost",
                "--mqtt_bridge_port",
                str(server.mqtt_port),
                "--num_messages",
                "80",
                "--interval",
                "0.1",
            ],
            {**os.environ, "PYTHONPATH": str(PAHO1)},
            "device sample",
        )
        processes.append(device)
        assert device.expect("connect", timeout=15)["rc"] == 0
        # Above 10 degrees the backend turns the fan on; below 0, off again.
        on = device.expect("fan", on=True, timeout=30)
        assert on["temperature"] > 10
        off = device.expect("fan", on=False, timeout=30)
        assert off["temperature"] < 0

        telemetry = backend.expect("telemetry", data={"temperature": 1})
        assert telemetry["attributes"] | {"deviceNumId": "?"} == {
            "deviceId": DEVICE,
            "deviceNumId": "?",
            "deviceRegistryId": REGISTRY,
            "deviceRegistryLocation": LOCATION,
            "projectId": PROJECT,
        }
        assert telemetry["attributes"]["deviceNumId"].isdigit()
        assert backend.expect("config", fan_on=True)["version"].isdigit()
        assert backend.expect("config", fan_on=False)
        # Telemetry every 0.1 s asks for a config more often than the one per second per device
        # Cloud IoT Core allowed: the sample prints those 429s and goes on, as it did at Google.
        # Nothing else may fail.
        errors = [r["error"] for r in backend.records if r["event"] == "error"]
        assert all("HttpError 429" in e and "at most once per second" in e for e in errors), errors
        device.expect("done", timeout=30)
    finally:
        for process in processes:
            process.stop()
        stop_server(server)
