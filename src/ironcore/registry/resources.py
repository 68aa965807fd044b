"""The resources of the device manager, as Cloud IoT Core v1 defined them.

The field names, numbers and defaults are the v1 API's (google/cloud/iot/v1/resources.proto);
`registry.wire` gives them the JSON form clients expect.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

from pydantic import Field

from ironcore.registry.wire import EPOCH, Bytes, Int64, Message, Timestamp, enum_type


class MqttState(IntEnum):
    MQTT_STATE_UNSPECIFIED = 0
    MQTT_ENABLED = 1
    MQTT_DISABLED = 2


class HttpState(IntEnum):
    HTTP_STATE_UNSPECIFIED = 0
    HTTP_ENABLED = 1
    HTTP_DISABLED = 2


class LogLevel(IntEnum):
    LOG_LEVEL_UNSPECIFIED = 0
    NONE = 10
    ERROR = 20
    INFO = 30
    DEBUG = 40


class GatewayType(IntEnum):
    GATEWAY_TYPE_UNSPECIFIED = 0
    GATEWAY = 1
    NON_GATEWAY = 2


class GatewayAuthMethod(IntEnum):
    GATEWAY_AUTH_METHOD_UNSPECIFIED = 0
    ASSOCIATION_ONLY = 1
    DEVICE_AUTH_TOKEN_ONLY = 2
    ASSOCIATION_AND_DEVICE_AUTH_TOKEN = 3


class PublicKeyCertificateFormat(IntEnum):
    UNSPECIFIED_PUBLIC_KEY_CERTIFICATE_FORMAT = 0
    X509_CERTIFICATE_PEM = 1


class PublicKeyFormat(IntEnum):
    UNSPECIFIED_PUBLIC_KEY_FORMAT = 0
    RSA_X509_PEM = 1
    ES256_PEM = 2
    RSA_PEM = 3
    ES256_X509_PEM = 4


class EventNotificationConfig(Message):
    subfolder_matches: str = ""
    pubsub_topic_name: str = ""


class StateNotificationConfig(Message):
    pubsub_topic_name: str = ""


class MqttConfig(Message):
    mqtt_enabled_state: enum_type(MqttState) = MqttState.MQTT_STATE_UNSPECIFIED  # type: ignore[valid-type]


class HttpConfig(Message):
    http_enabled_state: enum_type(HttpState) = HttpState.HTTP_STATE_UNSPECIFIED  # type: ignore[valid-type]


class X509CertificateDetails(Message):
    issuer: str = ""
    subject: str = ""
    start_time: Timestamp | None = None
    expiry_time: Timestamp | None = None
    signature_algorithm: str = ""
    public_key_type: str = ""


class PublicKeyCertificate(Message):
    format: enum_type(PublicKeyCertificateFormat) = (  # type: ignore[valid-type]
        PublicKeyCertificateFormat.UNSPECIFIED_PUBLIC_KEY_CERTIFICATE_FORMAT
    )
    certificate: str = ""
    x509_details: X509CertificateDetails | None = None


class RegistryCredential(Message):
    public_key_certificate: PublicKeyCertificate | None = None


class DeviceRegistry(Message):
    id: str = ""
    name: str = ""
    event_notification_configs: list[EventNotificationConfig] = Field(default_factory=list)
    state_notification_config: StateNotificationConfig | None = None
    mqtt_config: MqttConfig | None = None
    http_config: HttpConfig | None = None
    log_level: enum_type(LogLevel) = LogLevel.LOG_LEVEL_UNSPECIFIED  # type: ignore[valid-type]
    credentials: list[RegistryCredential] = Field(default_factory=list)

    @property
    def mqtt_enabled(self) -> bool:
        return (
            self.mqtt_config is None
            or self.mqtt_config.mqtt_enabled_state != MqttState.MQTT_DISABLED
        )

    @property
    def http_enabled(self) -> bool:
        return (
            self.http_config is None
            or self.http_config.http_enabled_state != HttpState.HTTP_DISABLED
        )


class PublicKeyCredential(Message):
    format: enum_type(PublicKeyFormat) = PublicKeyFormat.UNSPECIFIED_PUBLIC_KEY_FORMAT  # type: ignore[valid-type]
    key: str = ""


class DeviceCredential(Message):
    ALWAYS: ClassVar[frozenset[str]] = frozenset({"expirationTime"})

    public_key: PublicKeyCredential | None = None
    expiration_time: Timestamp = EPOCH


class DeviceConfig(Message):
    version: Int64 = 0
    cloud_update_time: Timestamp | None = None
    device_ack_time: Timestamp | None = None
    binary_data: Bytes = b""


class DeviceState(Message):
    update_time: Timestamp | None = None
    binary_data: Bytes = b""


class Status(Message):
    code: int = 0
    message: str = ""
    details: list[dict[str, object]] = Field(default_factory=list)


class GatewayConfig(Message):
    gateway_type: enum_type(GatewayType) = GatewayType.GATEWAY_TYPE_UNSPECIFIED  # type: ignore[valid-type]
    gateway_auth_method: enum_type(GatewayAuthMethod) = (  # type: ignore[valid-type]
        GatewayAuthMethod.GATEWAY_AUTH_METHOD_UNSPECIFIED
    )
    last_accessed_gateway_id: str = ""
    last_accessed_gateway_time: Timestamp | None = None

    @property
    def is_gateway(self) -> bool:
        return bool(self.gateway_type == GatewayType.GATEWAY)


class Device(Message):
    # Cloud IoT Core wrote these even when unset: the times as the epoch, gatewayConfig as {}.
    ALWAYS: ClassVar[frozenset[str]] = frozenset(
        {
            "id",
            "name",
            "numId",
            "lastHeartbeatTime",
            "lastEventTime",
            "lastStateTime",
            "lastConfigAckTime",
            "lastConfigSendTime",
            "lastErrorTime",
            "gatewayConfig",
        }
    )

    id: str = ""
    name: str = ""
    num_id: Int64 = 0
    credentials: list[DeviceCredential] = Field(default_factory=list)
    last_heartbeat_time: Timestamp = EPOCH
    last_event_time: Timestamp = EPOCH
    last_state_time: Timestamp = EPOCH
    last_config_ack_time: Timestamp = EPOCH
    last_config_send_time: Timestamp = EPOCH
    blocked: bool = False
    last_error_time: Timestamp = EPOCH
    last_error_status: Status | None = None
    config: DeviceConfig | None = None
    state: DeviceState | None = None
    log_level: enum_type(LogLevel) = LogLevel.LOG_LEVEL_UNSPECIFIED  # type: ignore[valid-type]
    metadata: dict[str, str] = Field(default_factory=dict)
    gateway_config: GatewayConfig = Field(default_factory=GatewayConfig)


class Binding(Message):
    role: str = ""
    members: list[str] = Field(default_factory=list)
    condition: dict[str, str] | None = None


class Policy(Message):
    version: int = 0
    bindings: list[Binding] = Field(default_factory=list)
    etag: Bytes = b""
