"""`ironcore demo`: the whole story on an empty data directory, narrated, in under a minute.

Every step an operator would take is run as the real `ironcore` command it shows; the devices
are ten emulated secure elements from a freshly made reel, signing their own JWTs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ironcore.device.mqtt import DeviceClient, DeviceName, Endpoint
from ironcore.device.rotation import KeyRotator
from ironcore.device.software_element import SoftwareElement
from ironcore.device.tokens import es256_jwt
from ironcore.simulator.device import DeviceRefused, Stats, connect
from ironcore.simulator.fleet import Fleet, Target, tls_context
from ironcore.simulator.provision import members_from_reel

PROJECT, LOCATION, REGISTRY, BATCH = "demo", "us-central1", "demo-registry", "batch-001"
DEVICES = 10


class DemoFailed(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    def __init__(self, data_dir: Path) -> None:
        self.data = data_dir
        self.pki = data_dir / "pki"
        self.reel = data_dir / "reel"
        self.api_port, self.mqtt_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.started = time.monotonic()
        self.summary: list[tuple[str, str]] = []
        self.rotator: KeyRotator | None = None

    # Narration

    def step(self, title: str, why: str) -> None:
        print(f"\n\033[1m▶ {title}\033[0m  ({time.monotonic() - self.started:4.1f} s)")
        print(f"  {why}")

    def check(self, what: str, result: str) -> None:
        print(f"  \033[32m✓\033[0m {result}")
        self.summary.append((what, result))

    def cli(self, *args: str, show: bool = True) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
        env.update(
            IRONCORE_SERVER=self.url,
            IRONCORE_TOKEN=self.token,
            IRONCORE_PROJECT=PROJECT,
            IRONCORE_LOCATION=LOCATION,
            IRONCORE_PKI_DIR=str(self.pki),
            IRONCORE_CA_PASSPHRASE="demo passphrase, never use it",
        )
        if show:
            print(f"  $ ironcore {shlex.join(args)}")
        done = subprocess.run(
            [sys.executable, "-m", "ironcore", *args], capture_output=True, text=True, env=env
        )
        if done.returncode != 0:
            raise DemoFailed(f"ironcore {shlex.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"})

    # The story

    def run(self) -> None:
        try:
            self.start_server()
            self.manufacture()
            self.provision()
            asyncio.run(self.live())
        finally:
            self.stop_server()
        print(f"\n\033[1mDone in {time.monotonic() - self.started:.1f} s.\033[0m What to check:")
        for what, result in self.summary:
            print(f"  • {what}: {result}")

    def start_server(self) -> None:
        self.step(
            "Start ironcore", "SQLite in the data directory, admin API, MQTT bridge over TLS."
        )
        log = (self.data / "server.log").open("wb")
        args = ["serve", "--data-dir", str(self.data), "--api-host", "127.0.0.1"]
        args += ["--api-port", str(self.api_port), "--mqtt-port", str(self.mqtt_port)]
        args += ["--grpc-port", "0", "--device-http-port", "0"]
        print(f"  $ ironcore {shlex.join(args)}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
        self.server = subprocess.Popen(
            [sys.executable, "-m", "ironcore", *args], stdout=log, stderr=log, env=env
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise DemoFailed(f"the server did not start; see {self.data / 'server.log'}")
        self.token = (self.data / "admin-token").read_text().strip()
        self.check("server", f"ready on {self.url}; owner token in {self.data / 'admin-token'}")

    def manufacture(self) -> None:
        self.step(
            "Create the PKI",
            "An offline root CA, then one signer CA per production batch (path length 0).",
        )
        self.cli("ca", "init", "--org", "Demo Devices")
        self.cli("ca", "signer", "create", "--batch", BATCH)
        self.check("PKI", f"root CA and signer for {BATCH} in {self.pki}")
        self.step(
            "Manufacture a reel",
            f"{DEVICES} emulated secure elements make their keys inside; the batch signer "
            "certifies slot 0; the reel ships with a signed manifest.",
        )
        out = self.cli(
            "factory", "reel", "--signer", BATCH, "--count", str(DEVICES), "--out", str(self.reel)
        )
        self.check("reel", out.strip().splitlines()[-1])

    def provision(self) -> None:
        self.step("Create a registry and a subscription", "Telemetry goes to the embedded log.")
        topic = f"projects/{PROJECT}/topics/telemetry"
        self.cli("registries", "create", REGISTRY, "--event-topic", topic)
        self.cli("subscriptions", "create", "telemetry-reader", "--topic", "telemetry")
        self.step(
            "Import the manifest",
            "Every entry's signature and certificate chain is verified; one device per element.",
        )
        out = self.cli(
            "manifest",
            "import",
            str(self.reel / "manifest.json"),
            "-r",
            REGISTRY,
            "--trust-signer",
            str(self.pki / "manifest-signer.crt"),
            "--trust-root",
            str(self.pki / "root.crt"),
        )
        self.check("import", out.strip().splitlines()[-1])

    async def live(self) -> None:
        """Everything with connected devices, on one event loop."""
        await self.operate()
        await asyncio.to_thread(self.rotate)
        await self.revoke()

    async def operate(self) -> None:
        self.step(
            "Connect the devices",
            "Each element signs an ES256 JWT with its slot 0 key; TLS authenticates the server.",
        )
        target = Target(
            "localhost",
            self.mqtt_port,
            tls_context(str(self.data / "tls" / "ca.crt")),
            PROJECT,
            LOCATION,
            REGISTRY,
        )
        self.fleet = Fleet(target, members_from_reel(self.reel, PROJECT))
        self.target = target
        await self.fleet.connect_all()
        self.check(
            "connect", f"{len(self.fleet.devices)}/{DEVICES} devices connected over MQTT/TLS"
        )

        self.step("Stream telemetry", "QoS 1 events, acknowledged only once they are durable.")
        report = await self.fleet.send(rate=100, duration=2.0)
        out = self.cli(
            "--json", "subscriptions", "pull", "telemetry-reader", "--max-messages", "1000"
        )
        pulled = out.count('"ackId"')
        self.check(
            "telemetry",
            f"{report.stats.acknowledged} events acknowledged, {pulled} pulled by the subscription",
        )

        self.step("Push a configuration", "Versioned; each device acknowledges what it received.")
        configs_before = self.fleet.stats.configs
        first = self.fleet.members[0].device_id
        self.cli("devices", "config", "set", first, "-r", REGISTRY, "--data", '{"led": "green"}')
        with self.api() as api:
            for member in self.fleet.members[1:]:
                api.post(
                    f"/v1/projects/{PROJECT}/locations/{LOCATION}/registries/{REGISTRY}"
                    f"/devices/{member.device_id}:modifyCloudToDeviceConfig",
                    json={"binaryData": base64.b64encode(b'{"led": "green"}').decode()},
                ).raise_for_status()
        acked = await asyncio.to_thread(self._wait, self._config_acks, DEVICES)
        received = self.fleet.stats.configs - configs_before
        self.check("config", f"version 2 delivered to {received} devices, acknowledged by {acked}")

        self.step("Send a command", "Transient: delivered to the connected, subscribed device.")
        commands_before = self.fleet.stats.commands
        self.cli(
            "devices", "command", first, "-r", REGISTRY, "--data", "blink", "--subfolder", "led"
        )
        await asyncio.sleep(0.3)
        self.check(
            "command", f"{self.fleet.stats.commands - commands_before} command received by {first}"
        )

    def _config_acks(self) -> int:
        acked = 0
        with self.api() as api:
            for member in self.fleet.members:
                versions = api.get(
                    f"/v1/projects/{PROJECT}/locations/{LOCATION}/registries/{REGISTRY}"
                    f"/devices/{member.device_id}/configVersions"
                ).json()["deviceConfigs"]
                acked += "deviceAckTime" in versions[0]
        return acked

    @staticmethod
    def _wait(probe: Callable[[], int], goal: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        value = probe()
        while value < goal and time.monotonic() < deadline:
            time.sleep(0.2)
            value = probe()
        return value

    def rotate(self) -> None:
        member = self.fleet.members[-1]
        self.step(
            f"Rotate {member.device_id}'s key",
            "The element makes a key in a free slot and proves it holds it; the old key expires "
            "only after the device has connected with the new one.",
        )
        element_path = next(
            p
            for p in (self.reel / "elements").glob("*.json")
            if p.stem.upper() in member.device_id.upper()
        )
        element = SoftwareElement.open(element_path)
        rotator = KeyRotator(element, element_path.with_suffix(".keys"), PROJECT)
        client = DeviceClient(
            Endpoint("localhost", self.mqtt_port, str(self.data / "tls" / "ca.crt")),
            DeviceName(PROJECT, LOCATION, REGISTRY, member.device_id),
            rotator.tokens,
        )
        rotator.attach(client)
        client.start()
        try:
            self.cli("devices", "rotate-key", member.device_id, "-r", REGISTRY, "--grace", "3600")
            state = self._rotation_state(member.device_id)
            deadline = time.monotonic() + 20
            while state != "COMPLETED" and time.monotonic() < deadline:
                time.sleep(0.2)
                state = self._rotation_state(member.device_id)
            if state != "COMPLETED":
                raise DemoFailed(f"the rotation ended {state}")
        finally:
            client.stop()
        self.rotated, self.rotator = member.device_id, rotator
        self.check(
            "rotation",
            f"{member.device_id} now signs with slot {rotator.state.active}; its slot 0 key "
            "expires in an hour",
        )

    def _rotation_state(self, device_id: str) -> str:
        out = self.cli(
            "--json", "devices", "rotate-key", device_id, "-r", REGISTRY, "--status", show=False
        )
        return "COMPLETED" if '"COMPLETED"' in out else out

    async def revoke(self) -> None:
        self.step(
            f"Revoke {BATCH}",
            "The signer goes on the CRL and to ironcore: its devices are disconnected at once "
            "and refused from then on.",
        )
        connected = [d for d in self.fleet.devices if d.transport and not d.transport.is_closing()]
        await asyncio.to_thread(
            self.cli,
            "ca",
            "signer",
            "revoke",
            "--batch",
            BATCH,
            "--reason",
            "keyCompromise",
            "--server",
            self.url,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(d.wait_closed() for d in connected)), 5)
        still = [d for d in connected if d.transport and not d.transport.is_closing()]
        refused = 0
        for member in self.fleet.members:
            refused += not await self._connects(member.device_id, member.token())
        await self.fleet.close()
        self.check(
            "revocation",
            f"{len(connected) - len(still)} connected devices dropped; {refused}/{DEVICES} "
            "reconnects refused with their certified slot 0 key",
        )
        assert self.rotator is not None
        rotated_token = es256_jwt(
            self.rotator.element, self.rotator.state.active, PROJECT, time.time()
        )
        if await self._connects(self.rotated, rotated_token):
            raise DemoFailed(f"{self.rotated}'s rotated key survived the revocation")
        self.check(
            "provenance",
            f"{self.rotated}'s rotated key is refused too: it was offered over a session of "
            "the key the batch certified, so it descends from the revoked signer",
        )
        print(self.cli("devices", "provenance", self.rotated, "-r", REGISTRY).rstrip())

        self.step(
            f"Re-attest {self.rotated}",
            "An operator who trusts this device vouches for it: its current keys are accepted "
            "again, with who and when recorded; keys it rotates to later descend from that.",
        )
        self.cli("devices", "reattest", self.rotated, "-r", REGISTRY)
        if not await self._connects(self.rotated, rotated_token):
            raise DemoFailed(f"{self.rotated} was refused after its re-attestation")
        self.check("reattest", f"{self.rotated} connects again with its rotated key")

        self.step(
            f"Who changed {self.rotated}",
            "Every change is recorded in its own transaction: when, who, from where, the "
            "method and its result; refused calls too.",
        )
        device = f"projects/{PROJECT}/locations/{LOCATION}/registries/{REGISTRY}/devices/"
        found = f"resource:{device}{self.rotated}"
        entries = json.loads(self.cli("--json", "audit", "list", "--filter", found, show=False))
        print(self.cli("audit", "list", "--filter", found).rstrip())
        methods = {entry["method"] for entry in entries["auditLogs"]}
        if not methods:
            raise DemoFailed(f"the audit log holds no entry for {self.rotated}")
        self.check("audit", f"{len(entries['auditLogs'])} entries: {', '.join(sorted(methods))}")

    async def _connects(self, device_id: str, token: str) -> bool:
        try:
            device = await connect(
                self.target.host,
                self.target.port,
                self.target.tls,
                self.target.client_id(device_id),
                device_id,
                token,
                Stats(),
            )
        except DeviceRefused:
            return False
        device.close()
        return True

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()


def run_demo(data_dir: Path | None) -> Any:
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="ironcore-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(data_dir.iterdir()):
        raise DemoFailed(f"{data_dir} is not empty; the demo starts from an empty data directory")
    print(f"ironcore demo in {data_dir}")
    Demo(data_dir).run()
