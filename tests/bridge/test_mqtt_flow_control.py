"""Write-side flow control against a real server: a device that stops reading what it is sent.

The device is a raw MQTT client over TLS whose socket receives into a small buffer. While it
reads nothing, the operator keeps sending it 64 KiB commands. The server must stop taking them
once its transport's buffer is past the high-water mark (sendCommand answers
FAILED_PRECONDITION) instead of buffering without end, hold a config for later, and deliver
everything it accepted, in order, once the device reads again. A device that never reads again
is dropped by its keep-alive.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ironcore.bridge.mqtt import codec
from ironcore.bridge.mqtt.codec import (
    Connack,
    Connect,
    Pingreq,
    Publish,
    Suback,
    Subscribe,
    encode,
)
from tests.bridge.devices import (
    admin,
    client_id,
    create_device,
    create_registry,
    last_error,
    make_jwt,
    new_key,
)
from tests.bridge.test_mqtt_bad_input import gauge
from tests.conftest import Server, start_server, stop_server, wait_for

REGISTRY, DEVICE = "reg-slow", "dev-slow"
COMMAND = 64 * 1024
# What a device that does not read may cost the server at most: here the kernel's send buffer
# (tcp_wmem's largest, 4 MiB by default) and the transport's high-water mark stand between the
# server and the device, so 16 MiB is four times what the server should take on. Without
# write-side flow control it takes every command it is given.
BOUND = 16 * 1024 * 1024
PAUSED = "ironcore_mqtt_write_paused_connections"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = start_server(tmp_path / "data")
    try:
        create_registry(started, REGISTRY)
        yield started
    finally:
        stop_server(started)


class SlowDevice:
    """An MQTT client that reads only when told to."""

    def __init__(self, server: Server, token: str, keep_alive: int) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before connecting, so that the window the client offers stays small.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", server.mqtt_port))
        context = ssl.create_default_context(cafile=str(server.ca_file))
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.decoder = codec.Decoder(codec.MAX_PACKET_SIZE, codec.MAX_BUFFER_SIZE)
        cid = client_id(REGISTRY, DEVICE)
        self.send(Connect("MQTT", 4, True, keep_alive, cid, "unused", token.encode()))
        assert self.next_packet() == Connack(False, 0)
        topics = ((f"/devices/{DEVICE}/config", 0), (f"/devices/{DEVICE}/commands/#", 0))
        self.send(Subscribe(1, topics))
        assert self.next_packet() == Suback(1, (0, 0))
        first = self.next_packet()
        assert isinstance(first, Publish) and first.topic == f"/devices/{DEVICE}/config"

    def send(self, packet: codec.Packet) -> None:
        self.sock.sendall(encode(packet))

    def next_packet(self) -> codec.Packet:
        while (packet := self.decoder.next_packet()) is None:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.decoder.feed(data)
        return packet

    def next_publish(self) -> Publish:
        packet = self.next_packet()
        assert isinstance(packet, Publish), packet
        return packet

    def ping_until(self, stop: threading.Event) -> None:
        """Send PINGREQ twice a second (and read nothing) until `stop`."""
        while not stop.wait(0.5):
            try:
                self.send(Pingreq())
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def send_command(server: Server, data: bytes) -> httpx.Response:
    with admin(server) as api:
        return api.post(
            f"/registries/{REGISTRY}/devices/{DEVICE}:sendCommandToDevice",
            json={"binaryData": base64.b64encode(data).decode()},
        )


def test_a_device_that_does_not_read_is_sent_no_more(server: Server) -> None:
    key = new_key()
    create_device(server, REGISTRY, DEVICE, key)
    device = SlowDevice(server, make_jwt(key), keep_alive=0)
    try:
        accepted: list[bytes] = []
        while True:
            data = len(accepted).to_bytes(4, "big") * (COMMAND // 4)
            r = send_command(server, data)
            if r.status_code != 200:
                break
            accepted.append(data)
            assert len(accepted) * COMMAND <= BOUND, "the server buffers without bound"
        assert r.json()["error"]["status"] == "FAILED_PRECONDITION", r.text
        assert accepted, "no command was taken before the device stopped reading"
        assert gauge(server, PAUSED) == 1

        # A config made meanwhile is stored, and waits to be delivered.
        with admin(server) as api:
            r = api.post(
                f"/registries/{REGISTRY}/devices/{DEVICE}:modifyCloudToDeviceConfig",
                json={"binaryData": base64.b64encode(b"held").decode()},
            )
            assert r.status_code == 200, r.text

        # The device reads again: everything accepted arrives, in order, then the config.
        for data in accepted:
            command = device.next_publish()
            assert (command.topic, command.payload) == (f"/devices/{DEVICE}/commands", data)
        config = device.next_publish()
        assert (config.topic, config.payload) == (f"/devices/{DEVICE}/config", b"held")
        wait_for(lambda: gauge(server, PAUSED) == 0, what="writing resumed")

        assert send_command(server, b"again").status_code == 200
        assert device.next_publish().payload == b"again"
    finally:
        device.close()


def test_a_device_that_never_reads_again_is_dropped_by_its_keep_alive(server: Server) -> None:
    key = new_key()
    create_device(server, REGISTRY, DEVICE, key)
    device = SlowDevice(server, make_jwt(key), keep_alive=5)
    stop = threading.Event()
    pinger = threading.Thread(target=device.ping_until, args=(stop,), daemon=True)
    pinger.start()
    try:
        for n in range(BOUND // COMMAND):
            if send_command(server, n.to_bytes(4, "big") * (COMMAND // 4)).status_code != 200:
                break
        else:
            raise AssertionError("the server buffers without bound")
        assert gauge(server, PAUSED) == 1
        # The server reads nothing more from it, PINGREQs included: 1.5 keep-alives after the
        # last one it read, the connection is closed.
        wait_for(
            lambda: gauge(server, "ironcore_mqtt_connections") == 0, timeout=30, what="disconnect"
        )
        assert gauge(server, PAUSED) == 0
        last_error(server, REGISTRY, DEVICE, "keep-alive")
    finally:
        stop.set()
        pinger.join()
        device.close()
