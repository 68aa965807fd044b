"""Device authentication for the bridges: who is this device, and may it connect now?

Both bridges (MQTT and HTTP) come here with a registry, a device id and a JWT. The rules are
one set: the registry exists and has the bridge enabled, the device exists and is not blocked,
and the JWT verifies against one of its credentials that has not expired. Parsed keys are
cached, keyed by the credential's text, so the hot path does no PEM parsing.

Device contexts (the registry and the device) can be cached too, so that a device that sends
request after request is not read from the database each time. Whoever changes a device or a
registry in this process must then tell the authenticator (`forget_device`, `forget_all`; the
server's hub does, in `bridge.cluster.forgetting`). A changed entry is dropped, never patched;
entries also expire after `cache_seconds`, which bounds how long a change made by another
process sharing the database goes unseen. A refusal is never decided from the cache: a device
refused on its cached context is loaded again and checked once more, so a key, an unblocking or
a re-enabled bridge made anywhere applies at once. Unknown devices are not cached.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ironcore.errors import InvalidArgument, NotFound
from ironcore.identity import credentials as creds
from ironcore.identity.jwt import Claims, InvalidToken, verify_device_jwt
from ironcore.registry import provenance
from ironcore.registry.names import DeviceRef, RegistryName
from ironcore.registry.provenance import Provenance
from ironcore.registry.resources import Device, DeviceCredential, DeviceRegistry
from ironcore.registry.revocation import RevokedSigners
from ironcore.registry.store import Store
from ironcore.registry.store.revocation import RevokedSignerRecord
from ironcore.registry.wire import EPOCH

log = logging.getLogger(__name__)
_CLIENT_ID = re.compile(
    r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/registries/(?P<registry>[^/]+)/devices/(?P<device>[^/]+)"
)
# Parsed keys kept (with their PEM text, 200-500 bytes); a fleet's devices have up to 3 each,
# and a miss only costs a PEM parse.
_KEY_CACHE_SIZE = 100_000
# What the server caches (docs/architecture.md, "The device context cache"); an entry holds
# about 4.5 KB. A device helps only if it sends again within the TTL, so entries beyond the
# request rate times the TTL rarely hit.
CONTEXT_CACHE_SIZE = 10_000
CONTEXT_CACHE_SECONDS = 5.0


class DeviceRefused(Exception):
    """The device may not connect; `reason` is a short metric label, `message` says why.

    `num_id` is set when the device exists, so the reason can go to its lastErrorStatus.
    """

    def __init__(self, reason: str, message: str, num_id: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.num_id = num_id


@dataclass(frozen=True)
class DeviceContext:
    """A device as a bridge sees it: its registry and its current resource."""

    name: RegistryName
    registry: DeviceRegistry
    device: Device
    # A key rotation was under way when the device was read.
    rotating: bool = False
    # Where each credential came from, by fingerprint: what a revoked signer cuts off.
    provenance: dict[str, Provenance] = field(default_factory=dict)


@dataclass(frozen=True)
class Authenticated:
    context: DeviceContext
    claims: Claims
    # The credential's key the JWT verified against; revoking or expiring the credential ends
    # the connection.
    key: creds.ParsedKey
    # When the connection must end: the JWT's exp plus skew, or the credential's expiry.
    deadline: float


def parse_client_id(client_id: str) -> DeviceRef:
    match = _CLIENT_ID.fullmatch(client_id)
    if match is None:
        raise DeviceRefused(
            "client_id",
            "the client id is not projects/{p}/locations/{l}/registries/{r}/devices/{d}",
        )
    try:
        name = RegistryName.parse(match["project"], match["location"], match["registry"])
        return DeviceRef.parse(name, match["device"])
    except InvalidArgument as error:
        raise DeviceRefused("client_id", f"invalid client id: {error.message}") from None


class ContextCache:
    """Device contexts by the reference a request names them with: least recently used ones
    go beyond `size`, any goes `seconds` after it was loaded."""

    def __init__(self, size: int, seconds: float) -> None:
        self.size = size
        self.seconds = seconds
        # Bumped by every forget: a load that started before a change must not be cached.
        self.generation = 0
        self._entries: OrderedDict[DeviceRef, tuple[DeviceContext, float]] = OrderedDict()
        # A device may be cached under its string id and its numeric id.
        self._refs: dict[int, set[DeviceRef]] = {}
        # One registry object for the devices that share it (a third of an entry's memory),
        # also what a device not yet cached is loaded with (a registry read the fewer).
        self._registries: dict[RegistryName, tuple[DeviceRegistry, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ref: DeviceRef) -> DeviceContext | None:
        entry = self._entries.get(ref)
        if entry is None:
            return None
        if time.monotonic() >= entry[1]:
            self._remove(ref)
            return None
        self._entries.move_to_end(ref)
        return entry[0]

    def registry(self, name: RegistryName) -> DeviceRegistry | None:
        entry = self._registries.get(name)
        return entry[0] if entry is not None and time.monotonic() < entry[1] else None

    def put(self, ref: DeviceRef, context: DeviceContext, generation: int) -> DeviceContext:
        """Cache `context` (unless something changed since `generation`); returns it as
        cached, with the registry object its devices share."""
        if generation != self.generation or self.size <= 0:
            return context
        known = self.registry(context.name)
        if known is not None and (known is context.registry or known == context.registry):
            context = DeviceContext(
                context.name, known, context.device, context.rotating, context.provenance
            )
        else:
            self._registries[context.name] = (context.registry, time.monotonic() + self.seconds)
        self._remove(ref)
        self._entries[ref] = (context, time.monotonic() + self.seconds)
        self._refs.setdefault(context.device.num_id, set()).add(ref)
        while len(self._entries) > self.size:
            self._remove(next(iter(self._entries)))
        return context

    def forget_device(self, num_id: int) -> None:
        self.generation += 1
        for ref in self._refs.pop(num_id, ()):
            self._entries.pop(ref, None)

    def forget_all(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._refs.clear()
        self._registries.clear()

    def _remove(self, ref: DeviceRef) -> None:
        entry = self._entries.pop(ref, None)
        if entry is None:
            return
        num_id = entry[0].device.num_id
        refs = self._refs.get(num_id)
        if refs is not None:
            refs.discard(ref)
            if not refs:
                del self._refs[num_id]


class DeviceAuthenticator:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        revoked: RevokedSigners | None = None,
        cache: ContextCache | None = None,
    ):
        """`revoked`: the revoked signers device certificates are checked against (none
        without it). Without `cache` every authentication reads the device: give one only
        where every change to devices and registries reaches `forget_device` / `forget_all`."""
        self.store = store
        self.clock = clock
        self.revoked = revoked
        self.cache = cache
        self._keys: OrderedDict[tuple[str, str], creds.ParsedKey] = OrderedDict()

    async def load(self, ref: DeviceRef, registry: DeviceRegistry | None = None) -> DeviceContext:
        """The device and its registry (unless given), read now; NotFound if either is gone."""
        if registry is None:
            record = await self.store.registries.get_registry(ref.registry)
            if record is None:
                raise NotFound(f"Registry {ref.registry} not found")
            registry = record.registry
        # Without its config and state (read fresh where they are served), error status and
        # bookkeeping times: a connection holds its context for hours.
        found = await self.store.devices.get_device(
            ref.registry, ref.device_id, ref.num_id, bridge_view=True
        )
        if found is None:
            raise NotFound(f"Device {ref} not found")
        return DeviceContext(ref.registry, registry, found.device, found.rotating, found.provenance)

    def forget_device(self, num_id: int) -> None:
        """The device changed or was deleted: its cached context must not be used again."""
        if self.cache is not None:
            self.cache.forget_device(num_id)

    def forget_all(self) -> None:
        """A registry (or something every device depends on) changed."""
        if self.cache is not None:
            self.cache.forget_all()

    async def authenticate(self, ref: DeviceRef, token: bytes | str, bridge: str) -> Authenticated:
        """Check everything a connection needs; raise DeviceRefused saying what failed."""
        if self.cache is None:
            return await self._check(await self._load(ref), ref, token, bridge)
        cached = self.cache.get(ref)
        if cached is not None:
            try:
                return await self._check(cached, ref, token, bridge)
            except DeviceRefused:
                pass  # confirmed below against the device as it is now
        registry = self.cache.registry(ref.registry) if cached is None else None
        generation = self.cache.generation
        context = self.cache.put(ref, await self._load(ref, registry), generation)
        try:
            return await self._check(context, ref, token, bridge)
        except DeviceRefused:
            if registry is None:
                raise
        # Refused with the cached registry: confirmed against the registry as it is now.
        return await self._check(await self._load(ref), ref, token, bridge)

    async def _load(self, ref: DeviceRef, registry: DeviceRegistry | None = None) -> DeviceContext:
        try:
            return await self.load(ref, registry)
        except NotFound as error:
            raise DeviceRefused("unknown_device", error.message) from None

    async def _check(
        self, context: DeviceContext, ref: DeviceRef, token: bytes | str, bridge: str
    ) -> Authenticated:
        device = context.device
        if bridge == "mqtt" and not context.registry.mqtt_enabled:
            raise DeviceRefused("mqtt_disabled", "MQTT is disabled on the registry", device.num_id)
        if bridge == "http" and not context.registry.http_enabled:
            raise DeviceRefused("http_disabled", "HTTP is disabled on the registry", device.num_id)
        if device.blocked:
            raise DeviceRefused("blocked", "the device is blocked", device.num_id)
        now = self.clock()
        live = [c for c in device.credentials if c.public_key and _unexpired(c, now)]
        if not live:
            raise DeviceRefused("no_key", "the device has no unexpired credentials", device.num_id)
        first: InvalidToken | None = None
        for credential in live:
            key = self.parsed_key(credential)
            try:
                claims = verify_device_jwt(token, [key], ref.registry.project, now.timestamp())
            except InvalidToken as error:
                # Only a key mismatch moves on to the next key; any other reason is final.
                if error.reason not in ("signature", "no_key"):
                    raise DeviceRefused(
                        error.reason, f"invalid JWT: {error.message}", device.num_id
                    ) from None
                first = first or error
                continue
            if self.revoked is not None:
                await self.revoked.fresh()
                signer = self.revoked_ancestor(context, key)
                if signer is not None:
                    raise DeviceRefused(
                        "signer_revoked",
                        f"the credential's signer {signer.subject} was revoked: {signer.reason}",
                        device.num_id,
                    )
            deadline = claims.deadline
            if credential.expiration_time > EPOCH:
                deadline = min(deadline, credential.expiration_time.timestamp())
            return Authenticated(context, claims, key, deadline)
        assert first is not None
        raise DeviceRefused(first.reason, f"invalid JWT: {first.message}", device.num_id)

    def parsed_key(self, credential: DeviceCredential) -> creds.ParsedKey:
        """The credential's parsed key (its fingerprint computed once, when first asked),
        parsed once per key text.

        Keyed by the PEM text itself: a cached context hands the same str on every request,
        and a str keeps its hash, so a hit costs no hashing of the key.
        """
        assert credential.public_key is not None
        cache_key = (credential.public_key.format.name, credential.public_key.key)
        found = self._keys.get(cache_key)
        if found is None:
            found = creds.parse_device_key(cache_key[0], cache_key[1], "credential")
            self._keys[cache_key] = found
            if len(self._keys) > _KEY_CACHE_SIZE:
                self._keys.popitem(last=False)
        return found

    def still_valid(self, context: DeviceContext, fingerprint: str, bridge: str) -> str | None:
        """Why a connected device must now be disconnected, or None if it may stay."""
        if bridge == "mqtt" and not context.registry.mqtt_enabled:
            return "MQTT was disabled on the registry"
        if context.device.blocked:
            return "the device was blocked"
        now = self.clock()
        for credential in context.device.credentials:
            if credential.public_key is None:
                continue
            key = self.parsed_key(credential)
            if key.fingerprint != fingerprint:
                continue
            if not _unexpired(credential, now):
                return "the credential the device connected with expired"
            signer = self.revoked_ancestor(context, key)
            if signer is not None:
                return f"the signer its credential descends from ({signer.subject}) was revoked"
            return None
        return "the credential the device connected with was removed"

    def revoked_ancestor(
        self, context: DeviceContext, key: creds.ParsedKey
    ) -> RevokedSignerRecord | None:
        """From the revoked signers' snapshot: the revoked signer the credential with `key`
        descends from (certified it, or certified a key whose session offered it), if any and
        unless an operator re-attested it."""
        if self.revoked is None:
            return None
        return provenance.of(key, context.provenance).revoked_by(self.revoked.get)

    def credential_deadline(self, context: DeviceContext, fingerprint: str) -> float:
        """When the credential with `fingerprint` expires: inf when it never does (or is gone,
        which `still_valid` reports)."""
        for credential in context.device.credentials:
            if credential.public_key and self.parsed_key(credential).fingerprint == fingerprint:
                if credential.expiration_time > EPOCH:
                    return credential.expiration_time.timestamp()
                break
        return float("inf")


def _unexpired(credential: DeviceCredential, now: datetime) -> bool:
    return credential.expiration_time <= EPOCH or credential.expiration_time > now
