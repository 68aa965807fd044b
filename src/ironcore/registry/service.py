"""DeviceManager: the business rules of registries and devices, Cloud IoT Core's device manager.

The REST API (and through it the CLI) is an adapter over this class; it checks ids, limits,
credentials, versions and masks before the store writes. Other paths reach the same tables under
rules of their own: the bridges read devices and write what devices report (bridge/), manifest
import creates devices in bulk (factory/importer.py), firmware rollouts write configs
(firmware/rollout.py) and key rotations credentials (registry/rotation.py). Admin tokens and
roles are ironcore.access. Errors are `ironcore.errors` values with a google.rpc code.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from cryptography.hazmat.primitives import hashes

from ironcore import limits
from ironcore.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from ironcore.identity import credentials as creds
from ironcore.registry.iam import empty_policy, policy_write, stale
from ironcore.registry.masks import parse_mask, select_fields
from ironcore.registry.names import (
    NUM_ID_LIMIT,
    DeviceRef,
    LocationName,
    RegistryName,
    check_id,
    is_valid_project,
)
from ironcore.registry.resources import (
    Device,
    DeviceConfig,
    DeviceCredential,
    DeviceRegistry,
    DeviceState,
    GatewayConfig,
    GatewayType,
    Policy,
    PublicKeyCertificateFormat,
    X509CertificateDetails,
)
from ironcore.registry.store import Store, audit
from ironcore.registry.store.devices import DeviceFilter, DeviceRecord, DeviceRow, NumIdTaken
from ironcore.registry.store.registries import RegistryRecord

DEVICE_UPDATABLE = frozenset(
    {"credentials", "blocked", "metadata", "log_level", "gateway_config.gateway_auth_method"}
)
REGISTRY_UPDATABLE = frozenset(
    {
        "event_notification_configs",
        "state_notification_config",
        "state_notification_config.pubsub_topic_name",
        "mqtt_config",
        "mqtt_config.mqtt_enabled_state",
        "http_config",
        "http_config.http_enabled_state",
        "log_level",
        "credentials",
    }
)
# What ListDevices returns without a field mask, as the real service did.
LIST_ALWAYS = ("id", "numId")
GET_ALWAYS = ("id", "name", "numId")
T = TypeVar("T")


class ConnectedDevices(Protocol):
    """Whoever reaches connected devices (the bridges' hub): it delivers commands and configs,
    disconnects devices that a change no longer allows and makes the bridges forget what they
    cached of what changed."""

    async def send_command(self, device: Device, data: bytes, subfolder: str) -> bool:
        """Deliver a command; False when the device is not connected and subscribed."""

    async def config_changed(self, num_id: int, config: DeviceConfig) -> None: ...

    async def device_changed(self, num_id: int) -> None: ...

    async def registry_changed(self, name: RegistryName) -> None: ...

    async def rotation_changed(self, num_id: int) -> None:
        """A key rotation of the device started or moved on: tell the device."""

    async def key_in_use(self, num_id: int) -> str | None:
        """The fingerprint of the key a connected device authenticated with."""


class TopicCatalog(Protocol):
    """Where events go (the embedded Pub/Sub): topics a registry names are created on demand."""

    async def ensure_topics(self, names: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class ConfigFanoutResult:
    """What a bulk config update did: how many devices got each new version, and the devices
    it did not update (unknown ids; updated less than the minimum interval ago)."""

    cloud_update_time: datetime
    versions: Counter[int]
    not_found: list[str]
    too_soon: list[str]

    @property
    def updated(self) -> int:
        return sum(self.versions.values())


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


class DeviceManager:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        links: ConnectedDevices | None = None,
        topics: TopicCatalog | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.links = links
        self.topics = topics

    # Registries

    async def create_registry(
        self, parent: LocationName, registry: DeviceRegistry
    ) -> DeviceRegistry:
        if registry.name:
            raise InvalidArgument.field("name", "must be empty when creating a registry")
        name = RegistryName(parent, check_id(registry.id, "id"))
        self._check_registry(registry)
        audit.created(str(name))
        await self._ensure_topics(registry)
        record = await self.store.registries.create_registry(
            name, registry, self.clock(), limits.REGISTRIES_PER_LOCATION
        )
        return record.registry

    async def _ensure_topics(self, registry: DeviceRegistry) -> None:
        """Topics a registry routes to exist before any event or subscription needs them."""
        if self.topics is None:
            return
        names = [c.pubsub_topic_name for c in registry.event_notification_configs]
        if registry.state_notification_config is not None:
            names.append(registry.state_notification_config.pubsub_topic_name)
        await self.topics.ensure_topics([name for name in names if name])

    async def get_registry(self, name: RegistryName) -> DeviceRegistry:
        return (await self._registry(name)).registry

    async def update_registry(
        self, name: RegistryName, patch: DeviceRegistry, update_mask: str | None
    ) -> DeviceRegistry:
        paths = parse_mask(update_mask, DeviceRegistry, "update_mask", REGISTRY_UPDATABLE)
        if not paths:
            raise InvalidArgument.field("update_mask", "must name at least one field to update")
        if patch.id and patch.id != name.registry:
            raise InvalidArgument.field("device_registry.id", "cannot be changed")
        record = await self._registry(name)
        updated = record.registry.model_copy(deep=True)
        for path in paths:
            top = path.split(".")[0]
            setattr(updated, top, getattr(patch, top))
        self._check_registry(updated)
        audit.changed(record.registry.to_wire(), updated.to_wire())
        await self._ensure_topics(updated)
        await self.store.registries.update_registry(record.pk, name, updated)
        if self.links is not None:
            await self.links.registry_changed(name)
        return (await self._registry(name)).registry

    async def delete_registry(self, name: RegistryName) -> None:
        if not await self.store.registries.delete_registry(name):
            raise NotFound(f"Registry {name} not found")

    async def list_registries(
        self, parent: LocationName, page_size: int, page_token: str
    ) -> Page[DeviceRegistry]:
        size = _page_size(page_size)
        records = await self.store.registries.list_registries(
            parent, _decode_token(page_token), size + 1
        )
        token = _encode_token(records[size - 1].pk) if len(records) > size else ""
        return Page([record.registry for record in records[:size]], token)

    def _check_registry(self, registry: DeviceRegistry) -> None:
        if len(registry.event_notification_configs) > limits.EVENT_NOTIFICATION_CONFIGS:
            raise InvalidArgument.field(
                "event_notification_configs",
                f"at most {limits.EVENT_NOTIFICATION_CONFIGS} are allowed",
            )
        for i, config in enumerate(registry.event_notification_configs):
            field = f"event_notification_configs[{i}]"
            if config.subfolder_matches:
                _check_subfolder(config.subfolder_matches, f"{field}.subfolder_matches")
            _check_topic(config.pubsub_topic_name, f"{field}.pubsub_topic_name")
        if (
            registry.state_notification_config
            and registry.state_notification_config.pubsub_topic_name
        ):
            _check_topic(
                registry.state_notification_config.pubsub_topic_name,
                "state_notification_config.pubsub_topic_name",
            )
        if len(registry.credentials) > limits.REGISTRY_CREDENTIALS:
            raise InvalidArgument.field(
                "credentials", f"at most {limits.REGISTRY_CREDENTIALS} CA certificates are allowed"
            )
        seen: set[bytes] = set()
        for i, credential in enumerate(registry.credentials):
            field = f"credentials[{i}].public_key_certificate"
            certificate = credential.public_key_certificate
            if certificate is None:
                raise InvalidArgument.field(field, "is required")
            if certificate.format not in (
                PublicKeyCertificateFormat.X509_CERTIFICATE_PEM,
                PublicKeyCertificateFormat.UNSPECIFIED_PUBLIC_KEY_CERTIFICATE_FORMAT,
            ):
                raise InvalidArgument.field(f"{field}.format", "must be X509_CERTIFICATE_PEM")
            parsed, details = creds.parse_ca_certificate(
                certificate.certificate, f"{field}.certificate"
            )
            fingerprint = parsed.fingerprint(hashes.SHA256())
            if fingerprint in seen:
                raise InvalidArgument.field(field, "the same certificate is given twice")
            seen.add(fingerprint)
            certificate.format = PublicKeyCertificateFormat.X509_CERTIFICATE_PEM
            certificate.x509_details = X509CertificateDetails(
                issuer=details.issuer,
                subject=details.subject,
                start_time=details.start_time,
                expiry_time=details.expiry_time,
                signature_algorithm=details.signature_algorithm,
                public_key_type=details.public_key_type,
            )

    async def _registry(self, name: RegistryName) -> RegistryRecord:
        record = await self.store.registries.get_registry(name)
        if record is None:
            raise NotFound(f"Registry {name} not found")
        return record

    # Devices

    async def create_device(self, parent: RegistryName, device: Device) -> Device:
        if device.name:
            raise InvalidArgument.field("device.name", "must be empty when creating a device")
        if device.num_id:
            raise InvalidArgument.field(
                "device.num_id", "is assigned by the server; leave it unset"
            )
        check_id(device.id, "device.id")
        if device.config and device.config.version:
            raise InvalidArgument.field("device.config.version", "must be 0 when creating a device")
        if device.config and len(device.config.binary_data) > limits.CONFIG_BYTES:
            raise InvalidArgument.field(
                "device.config.binary_data", f"is larger than {limits.CONFIG_BYTES} bytes"
            )
        record = await self._registry(parent)
        self._check_device(record.registry, device, [])
        audit.created(f"{parent}/devices/{device.id}")
        fresh = Device(
            id=device.id,
            credentials=device.credentials,
            blocked=device.blocked,
            config=DeviceConfig(binary_data=device.config.binary_data if device.config else b""),
            log_level=device.log_level,
            metadata=device.metadata,
            gateway_config=GatewayConfig(
                gateway_type=device.gateway_config.gateway_type,
                gateway_auth_method=device.gateway_config.gateway_auth_method,
            ),
        )
        for _ in range(8):
            fresh.num_id = limits.NUM_ID_MIN + secrets.randbelow(
                limits.NUM_ID_MAX - limits.NUM_ID_MIN
            )
            try:
                return await self.store.devices.create_device(
                    record.pk, parent, fresh, self.clock()
                )
            except NumIdTaken:
                continue
        raise AlreadyExists("could not draw a free numeric device id; try again")

    async def get_device(self, ref: DeviceRef, field_mask: str | None = None) -> dict[str, Any]:
        """The device in wire form, reduced to `field_mask` when one is given."""
        device = (await self.device_record(ref)).device
        paths = parse_mask(field_mask, Device, "field_mask")
        wire = device.to_wire()
        return select_fields(wire, paths, GET_ALWAYS) if paths else wire

    async def device_row(self, ref: DeviceRef) -> DeviceRow:
        """The device's stored row, for an adapter that builds its answer from it without the
        resource in between (gRPC's GetDevice: `rpc.device_message`)."""
        row = await self.store.devices.get_device_row(ref.registry, ref.device_id, ref.num_id)
        if row is None:
            raise NotFound(f"Device {ref} not found")
        return row

    async def device_record(self, ref: DeviceRef) -> DeviceRecord:
        record = await self.store.devices.get_device(ref.registry, ref.device_id, ref.num_id)
        if record is None:
            raise NotFound(f"Device {ref} not found")
        return record

    async def update_device(self, ref: DeviceRef, patch: Device, update_mask: str | None) -> Device:
        paths = parse_mask(update_mask, Device, "update_mask", DEVICE_UPDATABLE)
        if not paths:
            raise InvalidArgument.field("update_mask", "must name at least one field to update")
        if patch.num_id:
            raise InvalidArgument.field("device.num_id", "cannot be changed")
        record = await self.device_record(ref)
        current = record.device
        if patch.id and patch.id != current.id:
            raise InvalidArgument.field("device.id", "cannot be changed")
        updated = current.model_copy(deep=True)
        for path in paths:
            if path == "gateway_config.gateway_auth_method":
                updated.gateway_config.gateway_auth_method = (
                    patch.gateway_config.gateway_auth_method
                )
            else:
                setattr(updated, path, getattr(patch, path))
        registry = await self.get_registry(ref.registry)
        previous = [
            c for c in current.credentials if "credentials" not in paths or c in patch.credentials
        ]
        self._check_device(registry, updated, previous)
        audit.changed(current.to_wire(), updated.to_wire())
        await self.store.devices.update_device(updated)
        if self.links is not None:
            await self.links.device_changed(updated.num_id)
        return (await self.device_record(ref)).device

    async def delete_device(self, ref: DeviceRef) -> None:
        device = (await self.device_record(ref)).device
        await self.store.devices.delete_device(ref.registry, device.num_id)
        if self.links is not None:
            await self.links.device_changed(device.num_id)

    async def list_devices(
        self,
        parent: RegistryName,
        *,
        device_ids: Sequence[str] = (),
        num_ids: Sequence[int] = (),
        field_mask: str | None = None,
        gateway_type: GatewayType | None = None,
        associations_gateway_id: str | None = None,
        associations_device_id: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[dict[str, Any]]:
        if len(device_ids) > limits.LIST_DEVICE_IDS_MAX:
            raise InvalidArgument.field("device_ids", f"at most {limits.LIST_DEVICE_IDS_MAX} ids")
        for device_id in device_ids:
            check_id(device_id, "device_ids")
        if len(num_ids) > limits.LIST_DEVICE_IDS_MAX:
            raise InvalidArgument.field(
                "device_num_ids", f"at most {limits.LIST_DEVICE_IDS_MAX} ids"
            )
        chosen = [
            option
            for option in (gateway_type, associations_gateway_id, associations_device_id)
            if option
        ]
        if len(chosen) > 1:
            raise InvalidArgument.field(
                "gateway_list_options",
                "set only one of gatewayType, associationsGatewayId, associationsDeviceId",
            )
        paths = parse_mask(field_mask, Device, "field_mask")
        record = await self._registry(parent)
        where = DeviceFilter(
            device_ids=device_ids,
            num_ids=num_ids,
            gateway_type=gateway_type or None,
            bound_to_gateway=await self._num_id(
                parent, associations_gateway_id, "gateway_list_options.associations_gateway_id"
            )
            if associations_gateway_id
            else None,
            gateways_of_device=await self._num_id(
                parent, associations_device_id, "gateway_list_options.associations_device_id"
            )
            if associations_device_id
            else None,
        )
        size = _page_size(page_size)
        devices = await self.store.devices.list_devices(
            record.pk, parent, where, _decode_token(page_token), size + 1
        )
        token = _encode_token(devices[size - 1].num_id) if len(devices) > size else ""
        return Page(
            [select_fields(device.to_wire(), paths, LIST_ALWAYS) for device in devices[:size]],
            token,
        )

    async def _num_id(self, registry: RegistryName, device: str, field: str) -> int:
        """The numeric id of a device named by either id; -1 (matches nothing) if absent."""
        ref = DeviceRef.parse(registry, device, field)
        found = await self.store.devices.get_device(registry, ref.device_id, ref.num_id)
        return found.device.num_id if found else -1

    def _check_device(
        self, registry: DeviceRegistry, device: Device, previous: list[DeviceCredential]
    ) -> None:
        """Check credentials and metadata; `previous` credentials skip the registry CA check.

        A registry's CA certificates apply to credentials added from now on: devices that were
        accepted before a CA changed keep working (Cloud IoT Core's rule).
        """
        if len(device.credentials) > limits.DEVICE_CREDENTIALS:
            raise InvalidArgument.field(
                "device.credentials", f"at most {limits.DEVICE_CREDENTIALS} credentials per device"
            )
        cas = [
            creds.load_certificate(
                c.public_key_certificate.certificate, f"registry.credentials[{i}]"
            )
            for i, c in enumerate(registry.credentials)
            if c.public_key_certificate
        ]
        fingerprints: set[str] = set()
        for i, credential in enumerate(device.credentials):
            field = f"device.credentials[{i}].public_key"
            if credential.public_key is None:
                raise InvalidArgument.field(field, "is required")
            key = creds.parse_device_key(
                credential.public_key.format.name, credential.public_key.key, field
            )
            if key.fingerprint in fingerprints:
                raise InvalidArgument.field(field, "the same key is given twice")
            fingerprints.add(key.fingerprint)
            if cas and credential not in previous:
                if key.certificate is None:
                    raise InvalidArgument.field(
                        f"{field}.format",
                        "the registry has CA certificates, "
                        "so device credentials must be X.509 certificates",
                    )
                if any(key.certificate == ca for ca in cas):
                    raise InvalidArgument.field(
                        f"{field}.key", "is one of the registry's CA certificates"
                    )
                creds.check_signed_by_any(key.certificate, cas, f"{field}.key")
        _check_metadata(device.metadata)

    # Configs, states, commands

    async def modify_config(
        self, ref: DeviceRef, version_to_update: int, data: bytes
    ) -> DeviceConfig:
        if len(data) > limits.CONFIG_BYTES:
            raise InvalidArgument.field(
                "binary_data", f"is larger than {limits.CONFIG_BYTES} bytes"
            )
        if version_to_update < 0:
            raise InvalidArgument.field("version_to_update", "must not be negative")
        record = await self.device_record(ref)
        current = record.device.config.version if record.device.config else 1
        if version_to_update and version_to_update != current:
            raise FailedPrecondition(
                f"The config version to update ({version_to_update}) "
                f"is not the current one ({current})"
            )
        now = self.clock()
        # The limit is between updates; version 1 is the device's creation, not an update.
        if current > 1 and now - record.config_update_time < timedelta(
            seconds=limits.CONFIG_UPDATE_INTERVAL_SECONDS
        ):
            raise ResourceExhausted(
                "Configs of a device can be updated at most once per second; try again shortly"
            )
        before = record.device.config.binary_data if record.device.config else b""
        audit.changed(
            {"version": current, "binaryData": base64.b64encode(before).decode()},
            {"version": current + 1, "binaryData": base64.b64encode(data).decode()},
        )
        config = await self.store.configs.modify_config(
            record.device.num_id, current, data, now, limits.CONFIG_VERSIONS_KEPT
        )
        if config is None:
            raise Aborted("The config changed while this update was applied; try again")
        if self.links is not None:
            await self.links.config_changed(record.device.num_id, config)
        return config

    async def modify_configs(
        self,
        parent: RegistryName,
        data: bytes,
        *,
        device_ids: Sequence[str] = (),
        all_devices: bool = False,
        gateway_id: str = "",
    ) -> ConfigFanoutResult:
        """Give many devices of a registry the same new config (ironcore's bulk extension).

        Exactly one way of choosing: `device_ids` (at most LIST_DEVICE_IDS_MAX), every device
        of the registry, or the devices bound to a gateway. All chosen devices get their next
        version in one transaction; unknown ids and devices whose config was updated less than
        CONFIG_UPDATE_INTERVAL_SECONDS ago are reported, not updated, and do not stop the rest.
        The per-device rate rule still applies: a bulk call is no way around it for a device
        someone is updating in a loop.
        """
        if len(data) > limits.CONFIG_BYTES:
            raise InvalidArgument.field(
                "binary_data", f"is larger than {limits.CONFIG_BYTES} bytes"
            )
        if sum((bool(device_ids), all_devices, bool(gateway_id))) != 1:
            raise InvalidArgument.field(
                "device_ids",
                "choose the devices with exactly one of deviceIds (non-empty), "
                "allDevices (true) or associationsGatewayId",
            )
        if len(device_ids) > limits.LIST_DEVICE_IDS_MAX:
            raise InvalidArgument.field(
                "device_ids",
                f"at most {limits.LIST_DEVICE_IDS_MAX} ids; for more, use allDevices",
            )
        seen: set[str] = set()
        for device_id in device_ids:
            check_id(device_id, "device_ids")
            if device_id in seen:
                raise InvalidArgument.field("device_ids", f"{device_id!r} is listed twice")
            seen.add(device_id)
        record = await self._registry(parent)
        where = DeviceFilter(device_ids=device_ids)
        if gateway_id:
            ref = DeviceRef.parse(parent, gateway_id, "associations_gateway_id")
            gateway = (await self.device_record(ref)).device
            if not gateway.gateway_config.is_gateway:
                raise InvalidArgument.field(
                    "associations_gateway_id", f"device {gateway_id} is not a gateway"
                )
            where = DeviceFilter(bound_to_gateway=gateway.num_id)
        now = self.clock()
        fanout = await self.store.configs.modify_configs(
            record.pk,
            where,
            data,
            now,
            now - timedelta(seconds=limits.CONFIG_UPDATE_INTERVAL_SECONDS),
            limits.CONFIG_VERSIONS_KEPT,
        )
        if self.links is not None:
            # One config object per version, shared by its devices (a fleet has few versions).
            configs: dict[int, DeviceConfig] = {}
            for num_id, _, version in fanout.updated:
                config = configs.get(version)
                if config is None:
                    config = DeviceConfig(version=version, cloud_update_time=now, binary_data=data)
                    configs[version] = config
                await self.links.config_changed(num_id, config)
        found = {device_id for _, device_id, _ in fanout.updated} | set(fanout.too_soon)
        return ConfigFanoutResult(
            now,
            Counter(version for _, _, version in fanout.updated),
            [device_id for device_id in device_ids if device_id not in found],
            fanout.too_soon,
        )

    async def list_config_versions(self, ref: DeviceRef, num_versions: int) -> list[DeviceConfig]:
        if num_versions < 0:
            raise InvalidArgument.field("num_versions", "must not be negative")
        record = await self.device_record(ref)
        limit = min(num_versions or limits.CONFIG_VERSIONS_KEPT, limits.CONFIG_VERSIONS_KEPT)
        return await self.store.configs.list_configs(record.device.num_id, limit)

    async def list_states(self, ref: DeviceRef, num_states: int) -> list[DeviceState]:
        if num_states < 0:
            raise InvalidArgument.field("num_states", "must not be negative")
        record = await self.device_record(ref)
        limit = min(num_states or limits.STATES_KEPT, limits.STATES_KEPT)
        return await self.store.configs.list_states(record.device.num_id, limit)

    async def send_command(self, ref: DeviceRef, data: bytes, subfolder: str) -> None:
        if len(data) > limits.COMMAND_BYTES:
            raise InvalidArgument.field(
                "binary_data", f"is larger than {limits.COMMAND_BYTES} bytes"
            )
        if len(subfolder.encode()) > limits.SUBFOLDER_MAX_BYTES or any(
            ch in limits.COMMAND_SUBFOLDER_FORBIDDEN for ch in subfolder
        ):
            raise InvalidArgument.field(
                "subfolder", f"at most {limits.SUBFOLDER_MAX_BYTES} bytes, without '+', '#' or NUL"
            )
        device = (await self.device_record(ref)).device
        # Nothing is stored, so no write carries the audit entry: the attempt is recorded
        # apart, with its result (the request's data by its size and hash only).
        if self.links is None or not await self.links.send_command(device, data, subfolder):
            error = FailedPrecondition(
                f"Device {ref} is not connected, "
                f"or not subscribed to /devices/{device.id}/commands/#"
            )
            await self.store.audit.attempted(error.code.name, error.message)
            raise error
        await self.store.audit.attempted("OK")

    # Gateways

    async def bind(self, parent: RegistryName, gateway_id: str, device_id: str) -> None:
        gateway, device = await self._binding_pair(parent, gateway_id, device_id)
        await self.store.devices.bind(
            gateway.num_id, device.num_id, limits.DEVICES_PER_GATEWAY, limits.GATEWAYS_PER_DEVICE
        )

    async def unbind(self, parent: RegistryName, gateway_id: str, device_id: str) -> None:
        gateway, device = await self._binding_pair(parent, gateway_id, device_id)
        if not await self.store.devices.unbind(gateway.num_id, device.num_id):
            raise NotFound(f"Device {device_id} is not bound to gateway {gateway_id}")

    async def _binding_pair(
        self, parent: RegistryName, gateway_id: str, device_id: str
    ) -> tuple[Device, Device]:
        if not gateway_id:
            raise InvalidArgument.field("gateway_id", "is required")
        if not device_id:
            raise InvalidArgument.field("device_id", "is required")
        await self._registry(parent)
        gateway = (
            await self.device_record(DeviceRef.parse(parent, gateway_id, "gateway_id"))
        ).device
        device = (await self.device_record(DeviceRef.parse(parent, device_id, "device_id"))).device
        if not gateway.gateway_config.is_gateway:
            raise InvalidArgument.field("gateway_id", f"device {gateway_id} is not a gateway")
        if device.gateway_config.is_gateway:
            raise InvalidArgument.field(
                "device_id", f"device {device_id} is a gateway; gateways cannot be bound"
            )
        return gateway, device

    # IAM

    async def get_iam_policy(self, name: RegistryName) -> Policy:
        record = await self._registry(name)
        stored = await self.store.registries.get_policy(record.pk)
        if stored is None:
            return empty_policy()
        policy, etag = stored
        return Policy.model_validate({**policy, "etag": etag})

    async def set_iam_policy(self, name: RegistryName, policy: Policy) -> Policy:
        record = await self._registry(name)
        write = policy_write(policy)
        if not await self.store.registries.set_policy(
            record.pk, write.body, write.etag, write.expected
        ):
            raise stale()
        return write.policy


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(requested or limits.LIST_PAGE_SIZE_MAX, limits.LIST_PAGE_SIZE_MAX)


def _encode_token(after: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{after}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, after = text.split(":")
        if prefix == "v1" and after.isascii() and after.isdigit() and int(after) <= NUM_ID_LIMIT:
            return int(after)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidArgument.field("page_token", "is not a page token this server issued")


def _check_subfolder(value: str, field: str) -> None:
    if len(value.encode()) > limits.SUBFOLDER_MAX_BYTES or not limits.SUBFOLDER_PATTERN.fullmatch(
        value
    ):
        raise InvalidArgument.field(
            field,
            f"{value[:60]!r} is not a valid subfolder ([a-zA-Z][-a-zA-Z0-9._+~%]*, ≤ 256 bytes)",
        )


def _check_topic(value: str, field: str) -> None:
    # Pub/Sub's topic ids follow the same rule as registry and device ids.
    parts = value.split("/")
    if (
        len(parts) != 4
        or parts[0] != "projects"
        or parts[2] != "topics"
        or not is_valid_project(parts[1])
        or not limits.is_valid_id(parts[3])
    ):
        raise InvalidArgument.field(
            field,
            f"{value[:80]!r} is not a topic name projects/{{project}}/topics/{{topic}} "
            "(a topic id has 3 to 255 characters from [a-zA-Z0-9-._+~%] and starts with a letter)",
        )


def _check_metadata(metadata: dict[str, str]) -> None:
    if len(metadata) > limits.METADATA_PAIRS:
        raise InvalidArgument.field("device.metadata", f"at most {limits.METADATA_PAIRS} pairs")
    total = 0
    for key, value in metadata.items():
        if (
            not limits.METADATA_KEY_PATTERN.fullmatch(key)
            or len(key.encode()) > limits.METADATA_KEY_BYTES
        ):
            raise InvalidArgument.field(
                "device.metadata",
                f"key {key[:60]!r} must match [a-zA-Z][-a-zA-Z0-9._+~%]* and be ≤ 128 bytes",
            )
        size = len(value.encode())
        if size > limits.METADATA_VALUE_BYTES:
            raise InvalidArgument.field("device.metadata", f"value of {key!r} is larger than 32 KB")
        total += len(key.encode()) + size
    if total > limits.METADATA_TOTAL_BYTES:
        raise InvalidArgument.field("device.metadata", "is larger than 256 KB in total")
