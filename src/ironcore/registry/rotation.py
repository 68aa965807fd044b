"""Key rotation that never bricks a device: the rules (docs/rotation.md has the protocol).

1. The operator starts a rotation: state `requested`, with a nonce. The bridge tells the device.
2. The device makes a key in a free secondary slot and offers its public key, with a signature
   by that key over the rotation id, the nonce and the key (proof of possession), over the
   connection it authenticated with its current key. ironcore adds the key as one more
   credential (never beyond three, never removing the key in use): state `key_added`.
3. The device reconnects with the new key. Only when that connection authenticates does the
   old key get an expiration (the grace period) and the rotation become `completed`.

Until step 3 succeeds the old key stays valid without expiry, so every failure in between
leaves the device a key it holds that ironcore accepts. A rotation can be rolled back before it
completes, which removes the new key (unless the device is using it).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ironcore import jose, limits
from ironcore.errors import Aborted, FailedPrecondition, InvalidArgument, IronCoreError, NotFound
from ironcore.formats.rotation import proof_input
from ironcore.identity import credentials as creds
from ironcore.registry import provenance
from ironcore.registry.resources import DeviceCredential, PublicKeyCredential, PublicKeyFormat
from ironcore.registry.store.rotation import ACTIVE, RotationStore
from ironcore.registry.wire import EPOCH, format_timestamp, parse_timestamp

DEFAULT_GRACE_SECONDS = 24 * 3600
MAX_GRACE_SECONDS = 365 * 24 * 3600


@dataclass(frozen=True)
class KeyRotation:
    id: str
    state: str
    nonce: str
    grace_seconds: int
    started: str
    updated: str
    # The credential the device used when it offered the new key: it expires on completion.
    old_key: str = ""
    new_key: str = ""
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.upper(),
            "graceSeconds": self.grace_seconds,
            "startTime": self.started,
            "updateTime": self.updated,
            **({"reason": self.reason} if self.reason else {}),
        }


class Rotations:
    def __init__(
        self, store: RotationStore, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.store = store
        self.clock = clock

    async def current(self, num_id: int) -> KeyRotation | None:
        found = await self.store.read(num_id)
        if found is None:
            raise NotFound(f"No device with numeric id {num_id}")
        rotation, _ = found
        return KeyRotation(**rotation) if rotation else None

    async def start(self, num_id: int, grace_seconds: int = DEFAULT_GRACE_SECONDS) -> KeyRotation:
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise InvalidArgument.field(
                "grace_seconds", f"must be between 0 and {MAX_GRACE_SECONDS}"
            )
        current = await self.current(num_id)
        if current is not None and current.active:
            raise FailedPrecondition(
                f"A key rotation ({current.id}) is already {current.state}; finish or roll it back"
            )
        now = self._now()
        rotation = KeyRotation(
            id=secrets.token_hex(8),
            state="requested",
            nonce=secrets.token_urlsafe(16),
            grace_seconds=grace_seconds,
            started=now,
            updated=now,
        )
        if not await self.store.write(num_id, None, asdict(rotation)):
            raise Aborted("The device changed while the rotation started; try again")
        return rotation

    async def offer(
        self, num_id: int, rotation_id: str, public_key_pem: str, proof: str, used_key: str
    ) -> KeyRotation:
        """The device offers its new key over a connection authenticated with `used_key`.

        Adds the key (state key_added) or refuses it (state failed, with the reason); offering
        the same key again is answered with the same result.
        """
        found = await self.store.read_with_provenance(num_id)
        if found is None:
            raise NotFound(f"No device with numeric id {num_id}")
        raw, credentials, recorded = found
        rotation = KeyRotation(**raw) if raw else None
        if rotation is None or rotation.id != rotation_id:
            raise FailedPrecondition(f"There is no key rotation {rotation_id!r} for this device")
        if rotation.state != "requested":
            return rotation
        try:
            key = creds.parse_device_key("ES256_PEM", public_key_pem, "public_key")
            _check_proof(
                key.public_key, proof, proof_input(rotation.id, rotation.nonce, public_key_pem)
            )
            fingerprints = [provenance.fingerprint(c) for c in credentials]
            if key.fingerprint in fingerprints:
                raise InvalidArgument.field(
                    "public_key", "is already one of the device's credentials"
                )
            if await self.store.registry_has_cas(num_id):
                raise FailedPrecondition(
                    "the registry has CA certificates, so it accepts only X.509 credentials; "
                    "a device cannot certify its own new key"
                )
            # The new key is only as trusted as the one whose session offered it.
            parent = _parent(credentials, recorded, used_key)
            live = [c for c in credentials if not _expired(c, self.clock())]
            if len(live) >= limits.DEVICE_CREDENTIALS:
                raise FailedPrecondition(
                    f"the device already has {limits.DEVICE_CREDENTIALS} live credentials; "
                    "remove one it no longer uses"
                )
        except IronCoreError as error:
            failed = _moved(rotation, self._now(), state="failed", reason=error.message)
            await self.store.write(num_id, rotation.id, asdict(failed))
            return failed
        new = DeviceCredential(
            public_key=PublicKeyCredential(format=PublicKeyFormat.ES256_PEM, key=public_key_pem)
        ).to_wire()
        added = _moved(
            rotation, self._now(), state="key_added", old_key=used_key, new_key=key.fingerprint
        )
        origin = {key.fingerprint: provenance.rotated(parent, used_key)}
        if not await self.store.write(num_id, rotation.id, asdict(added), [*live, new], origin):
            raise Aborted("The rotation changed while the key was added; offer it again")
        return added

    async def fail(self, num_id: int, rotation_id: str, reason: str) -> KeyRotation:
        """The device gives up (no free slot, its new key was refused): the rotation fails and
        a new key that was added is removed again; the old key is untouched."""
        found = await self.store.read(num_id)
        if found is None:
            raise NotFound(f"No device with numeric id {num_id}")
        raw, credentials = found
        current = KeyRotation(**raw) if raw else None
        if current is None or current.id != rotation_id:
            raise FailedPrecondition(f"There is no key rotation {rotation_id!r} for this device")
        if not current.active:
            return current
        kept = [c for c in credentials if provenance.fingerprint(c) != current.new_key]
        failed = _moved(current, self._now(), state="failed", reason=f"device: {reason[:500]}")
        if not await self.store.write(num_id, current.id, asdict(failed), kept):
            raise Aborted("The rotation changed meanwhile")
        return failed

    async def connected(self, num_id: int, used_key: str) -> KeyRotation | None:
        """A device authenticated with `used_key`: complete its rotation if that is the new key.

        Returns the rotation when the device has something to hear about (a request to act on,
        a key added, a completion), else None.
        """
        found = await self.store.read(num_id)
        if found is None:
            return None
        raw, credentials = found
        if raw is None:
            return None
        rotation = KeyRotation(**raw)
        if rotation.state != "key_added" or used_key != rotation.new_key:
            return rotation if rotation.active else None
        expires = format_timestamp(self.clock() + timedelta(seconds=rotation.grace_seconds))
        updated = [
            {**c, "expirationTime": expires} if provenance.fingerprint(c) == rotation.old_key else c
            for c in credentials
        ]
        completed = _moved(rotation, self._now(), state="completed")
        if not await self.store.write(num_id, rotation.id, asdict(completed), updated):
            return None
        return completed

    async def rollback(self, num_id: int, in_use: str | None) -> KeyRotation:
        """Abandon an unfinished rotation; the new key is removed unless it is `in_use`."""
        found = await self.store.read(num_id)
        if found is None:
            raise NotFound(f"No device with numeric id {num_id}")
        raw, credentials = found
        rotation = KeyRotation(**raw) if raw else None
        if rotation is None or not rotation.active:
            raise FailedPrecondition("There is no key rotation under way to roll back")
        if rotation.new_key and rotation.new_key == in_use:
            raise FailedPrecondition(
                "The device is connected with the new key; let the rotation complete instead"
            )
        kept = [c for c in credentials if provenance.fingerprint(c) != rotation.new_key]
        rolled = _moved(
            rotation, self._now(), state="rolled_back", reason="rolled back by an operator"
        )
        if not await self.store.write(num_id, rotation.id, asdict(rolled), kept):
            raise Aborted("The rotation changed meanwhile; look at it again")
        return rolled

    def _now(self) -> str:
        return format_timestamp(self.clock())


def _moved(rotation: KeyRotation, now: str, **changes: str) -> KeyRotation:
    return KeyRotation(**{**asdict(rotation), **changes, "updated": now})


def _check_proof(key: creds.PublicKey, proof: str, signed: bytes) -> None:
    try:
        signature = jose.b64url_decode(proof, "proof", padding=True)
    except jose.JoseError as error:
        raise InvalidArgument.field("proof", error.message) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(signature) != 64:
        raise InvalidArgument.field("proof", "must be a 64-byte ES256 signature (r‖s)")
    if not jose.es256_verify(key, signature, signed):
        raise InvalidArgument.field("proof", "does not verify with the offered key")


def _parent(
    credentials: list[dict[str, Any]], recorded: dict[str, provenance.Provenance], used_key: str
) -> provenance.Provenance:
    """The provenance of the credential with fingerprint `used_key`, the session's."""
    for credential in credentials:
        key = provenance.parsed(credential)
        if key is not None and key.fingerprint == used_key:
            return provenance.of(key, recorded)
    raise FailedPrecondition(
        "the key the device connected with is no longer one of its credentials"
    )


def _expired(credential: dict[str, Any], now: datetime) -> bool:
    expiration = parse_timestamp(credential.get("expirationTime", "1970-01-01T00:00:00Z"))
    return EPOCH < expiration <= now
