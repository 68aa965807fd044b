"""The device side of key rotation (docs/rotation.md): a new key in a free secondary slot of
the secure element, offered with proof of possession, used once ironcore has added it, and
abandoned for the old one if ironcore refuses it.

The device's slot choice is kept in a small state file next to its element, written before
every step that depends on it, so a crash at any point restarts from a state that connects.

    rotator = KeyRotator(element, Path("device.keys.json"), project)
    client = DeviceClient(endpoint, name, rotator.tokens)
    rotator.attach(client)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from ironcore import jose
from ironcore.device.mqtt import DeviceClient, PublishError
from ironcore.device.secure_element import (
    PERMANENT_SLOT,
    REGENERABLE_SLOTS,
    SecureElement,
    SecureElementError,
    public_key_from_raw,
)
from ironcore.device.tokens import DEFAULT_LIFETIME_SECONDS, TokenSource, es256_jwt
from ironcore.formats import rotation as protocol

log = logging.getLogger(__name__)


@dataclass
class SlotState:
    active: int = PERMANENT_SLOT
    # The slot used before the last switch: the fallback while the new key is unproven.
    previous: int | None = None
    # A key made for a rotation and not yet in use: (rotation id, slot).
    pending_rotation: str = ""
    pending_slot: int | None = None
    # A rotation whose new key ironcore refused at connect: give it up instead of retrying.
    refused_rotation: str = ""


class KeyRotator:
    def __init__(
        self,
        element: SecureElement,
        state_file: Path,
        project: str,
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
    ) -> None:
        self.element = element
        self.state_file = state_file
        self.state = self._load()
        self.tokens = TokenSource(
            lambda now: es256_jwt(element, self.state.active, project, now, lifetime), lifetime
        )
        self._client: DeviceClient | None = None
        self._lock = threading.Lock()
        # The last refusal of a key the device had just switched to.
        self.events: list[str] = []

    def attach(self, client: DeviceClient) -> None:
        self._client = client
        client.on_ironcore_command = self._on_command
        client.on_refused = self._on_refused

    # State file

    def _load(self) -> SlotState:
        try:
            return SlotState(**json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return SlotState()

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state)))
        os.replace(tmp, self.state_file)

    # Commands from ironcore (paho's thread: act on a worker thread, since acting publishes
    # and waits for acknowledgements that paho's thread delivers)

    def _on_command(self, name: str, payload: bytes) -> None:
        if name != protocol.NAME:
            return
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("unreadable key rotation command %r", payload[:100])
            return
        threading.Thread(target=self._handle, args=(message,), daemon=True).start()

    def _handle(self, message: dict[str, str]) -> None:
        with self._lock:
            state = message.get("state", "")
            rotation = message.get("rotation", "")
            self.events.append(state)
            if state == "REQUESTED":
                self._offer(rotation, message.get("nonce", ""))
            elif state == "KEY_ADDED":
                self._switch(rotation)
            elif state in ("COMPLETED", "FAILED"):
                self._finish(rotation, state, message.get("reason", ""))

    def _offer(self, rotation: str, nonce: str) -> None:
        assert self._client is not None
        if self.state.pending_rotation != rotation or self.state.pending_slot is None:
            slot = self._free_slot()
            if slot is None:
                self._publish({"rotation": rotation, "error": "all secondary key slots are in use"})
                return
            try:
                self.element.genkey(slot)
            except SecureElementError as error:
                self._publish({"rotation": rotation, "error": str(error)})
                return
            # Remember the new key before offering it: after a crash the offer is repeated
            # with the same key rather than one ironcore never saw.
            self.state.pending_rotation, self.state.pending_slot = rotation, slot
            self._save()
        slot = self.state.pending_slot
        assert slot is not None
        pem = self.public_key_pem(slot)
        signature = self.element.sign(
            slot, hashlib.sha256(protocol.proof_input(rotation, nonce, pem)).digest()
        )
        proof = jose.b64url_encode(signature)
        self._publish({"rotation": rotation, "publicKey": pem, "proof": proof})

    def _switch(self, rotation: str) -> None:
        assert self._client is not None
        if self.state.pending_rotation != rotation or self.state.pending_slot is None:
            return
        if self.state.refused_rotation == rotation:
            self._publish(
                {"rotation": rotation, "error": "ironcore refused the new key at connect"}
            )
            self._finish(rotation, "FAILED", "the new key was refused")
            return
        if self.state.active != self.state.pending_slot:
            self.state.previous, self.state.active = self.state.active, self.state.pending_slot
            self._save()
        # Reconnecting with the new key is what completes the rotation on ironcore's side.
        self._client.reconnect_now()

    def _finish(self, rotation: str, state: str, reason: str) -> None:
        if self.state.pending_rotation != rotation:
            return
        if state == "FAILED":
            log.warning("key rotation %s failed: %s", rotation, reason)
            if self.state.active == self.state.pending_slot and self.state.previous is not None:
                self.state.active = self.state.previous
        self.state.previous = None
        self.state.pending_rotation, self.state.pending_slot = "", None
        self.state.refused_rotation = ""
        self._save()

    def _on_refused(self, connack: int) -> None:
        """ironcore refused the key the device just switched to: go back to the old one, which
        stays valid until a rotation completes."""
        with self._lock:
            if self.state.previous is not None and self.state.active == self.state.pending_slot:
                log.warning("the new key was refused (CONNACK %d); using the previous one", connack)
                self.events.append("REVERTED")
                self.state.active = self.state.previous
                self.state.previous = None
                self.state.refused_rotation = self.state.pending_rotation
                self._save()
                self.tokens.reset()

    def _free_slot(self) -> int | None:
        in_use = {self.state.active, self.state.previous}
        for slot in REGENERABLE_SLOTS:
            if slot not in in_use and not self.element.is_locked(slot):
                return slot
        return None

    def _publish(self, body: dict[str, str]) -> None:
        assert self._client is not None
        topic = f"/devices/{self._client.name.device_id}/{protocol.SUBFOLDER}"
        try:
            self._client.publish(topic, json.dumps(body).encode())
        except PublishError as error:
            # Not acknowledged: ironcore repeats the request on the next connection.
            log.warning("key offer not acknowledged: %s", error)

    def public_key_pem(self, slot: int) -> str:
        key = public_key_from_raw(self.element.get_pubkey(slot))
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
