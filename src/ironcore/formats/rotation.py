"""The key rotation protocol between ironcore and a device (docs/rotation.md), as it is on the
wire: where its messages go, and what the device's new key signs.

ironcore sends the rotation's state to the device as a command in the subfolder `SUBFOLDER`;
the device answers on its topic `/devices/{device id}/SUBFOLDER`, with its new public key and
`proof_input` signed by that key (ES256, base64url r‖s). ironcore's side is
`registry.rotation` with the MQTT bridge; the device's is `device.rotation`.
"""

from __future__ import annotations

# ironcore's own commands and device topics live under "ironcore/"; the device SDK hands its
# commands on by the name after that prefix.
NAME = "key-rotation"
SUBFOLDER = f"ironcore/{NAME}"


def proof_input(rotation_id: str, nonce: str, public_key_pem: str) -> bytes:
    """What the new key signs (ECDSA P-256, SHA-256) to prove the device holds it."""
    return f"ironcore-key-rotation\n{rotation_id}\n{nonce}\n{public_key_pem}".encode()
