"""The tables of the store, one schema for SQLite and PostgreSQL.

Times are integer microseconds since the epoch (0 = unset), the same on both databases.
Fields that are read and written as a whole (credentials, metadata, a registry's configs) are
JSON; fields the bridges update alone (the `last*` times) have columns of their own.
"""

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    FetchedValue,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(value: datetime) -> int:
    return int((value - _EPOCH).total_seconds() * 1_000_000) if value > _EPOCH else 0


def from_us(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC) if value else _EPOCH


metadata = MetaData()
Json = JSON().with_variant(JSONB(), "postgresql")

registries = Table(
    "registries",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("project", String(100), nullable=False),
    Column("location", String(63), nullable=False),
    Column("registry_id", String(255), nullable=False),
    Column("body", Json, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("project", "location", "registry_id", name="uq_registries_name"),
)

devices = Table(
    "devices",
    metadata,
    Column("num_id", BigInteger, primary_key=True, autoincrement=False),
    Column("registry_pk", Integer, ForeignKey("registries.pk"), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("blocked", Boolean, nullable=False),
    Column("gateway_type", SmallInteger, nullable=False),
    Column("body", Json, nullable=False),
    Column("config_version", BigInteger, nullable=False),
    Column("config_data", LargeBinary, nullable=False),
    Column("config_update_time", BigInteger, nullable=False),
    Column("config_ack_time", BigInteger, nullable=False),
    Column("state_data", LargeBinary, nullable=True),
    Column("state_time", BigInteger, nullable=False),
    Column("last_heartbeat_time", BigInteger, nullable=False),
    Column("last_event_time", BigInteger, nullable=False),
    Column("last_state_time", BigInteger, nullable=False),
    Column("last_config_ack_time", BigInteger, nullable=False),
    Column("last_config_send_time", BigInteger, nullable=False),
    Column("last_error_time", BigInteger, nullable=False),
    Column("last_error_code", Integer, nullable=False),
    Column("last_error_message", Text, nullable=False),
    Column("last_gateway_id", String(255), nullable=False),
    Column("last_gateway_time", BigInteger, nullable=False),
    UniqueConstraint("registry_pk", "device_id", name="uq_devices_id"),
)

device_configs = Table(
    "device_configs",
    metadata,
    Column(
        "num_id", BigInteger, ForeignKey("devices.num_id", ondelete="CASCADE"), primary_key=True
    ),
    Column("version", BigInteger, primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("cloud_update_time", BigInteger, nullable=False),
    Column("device_ack_time", BigInteger, nullable=False),
)

device_states = Table(
    "device_states",
    metadata,
    Column(
        "pk", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("num_id", BigInteger, ForeignKey("devices.num_id", ondelete="CASCADE"), nullable=False),
    Column("update_time", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Index("ix_device_states_device", "num_id", "update_time"),
)

gateway_bindings = Table(
    "gateway_bindings",
    metadata,
    Column(
        "gateway_num_id",
        BigInteger,
        ForeignKey("devices.num_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "device_num_id",
        BigInteger,
        ForeignKey("devices.num_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Index("ix_gateway_bindings_device", "device_num_id"),
)

iam_policies = Table(
    "iam_policies",
    metadata,
    Column(
        "registry_pk", Integer, ForeignKey("registries.pk", ondelete="CASCADE"), primary_key=True
    ),
    Column("policy", Json, nullable=False),
    Column("etag", String(64), nullable=False),
)

admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),  # None: never expires
    Column("last_used_at", BigInteger),  # written behind (access.callers)
    # The IAM member it acts as: `adminToken:<id>`, or `user:<email>` (access.tokens).
    Column("principal", String(300), nullable=False),
)

# Telemetry and state notifications, appended in order; routing reads them per topic.
events = Table(
    "events",
    metadata,
    Column(
        "pk", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("topic", String(300), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("attributes", Json, nullable=False),
    Column("publish_time", BigInteger, nullable=False),
    # PostgreSQL: the inserting transaction's id, by default (migration 0006); the log's order
    # is (xid, pk) and the index (topic, xid, pk) replaces this one. SQLite: 0. See pubsub.py.
    Column("xid", BigInteger, nullable=False, server_default=FetchedValue()),
    Index("ix_events_topic", "topic", "pk"),
)

# The embedded Pub/Sub: topics (and what backs them), subscriptions with a cursor into the
# event log, and leases for messages handed out and not yet acknowledged.
topics = Table(
    "topics",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("name", String(300), nullable=False, unique=True),
    Column("backend", String(20), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("name", String(300), nullable=False, unique=True),
    Column("topic", String(300), nullable=False),
    Column("ack_deadline_seconds", Integer, nullable=False),
    Column("push_endpoint", Text, nullable=False),
    Column("push_secret", Text, nullable=False),
    Column("dead_letter_topic", String(300), nullable=False),
    Column("max_delivery_attempts", Integer, nullable=False),
    Column("cursor", BigInteger, nullable=False),
    # With `cursor`, the position (xid, pk) in the log after which events are new.
    Column("cursor_xid", BigInteger, nullable=False, server_default="0"),
    Column("created_at", BigInteger, nullable=False),
)

subscription_leases = Table(
    "subscription_leases",
    metadata,
    Column(
        "subscription_pk",
        Integer,
        ForeignKey("subscriptions.pk", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("event_pk", BigInteger, primary_key=True),
    Column("deadline", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Index("ix_subscription_leases_deadline", "subscription_pk", "deadline"),
)

# Batch signer CAs the owner revoked: devices whose certificates they signed are refused.
# `key_id` is the signer's SubjectKeyIdentifier (hex), which device certificates carry as
# their AuthorityKeyIdentifier; `fingerprint` is the SHA-256 of the signer certificate.
revoked_signers = Table(
    "revoked_signers",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("fingerprint", String(64), nullable=False, unique=True),
    Column("subject", Text, nullable=False),
    Column("certificate", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("revoked_at", BigInteger, nullable=False),
)

# Firmware images uploaded to a project (docs/firmware.md, Rollouts). The bytes live in the
# data directory under their SHA-256; the row is what the manifest says about them.
firmware_images = Table(
    "firmware_images",
    metadata,
    Column("project", String(100), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("model", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("project", "model", "version", name="uq_firmware_images_version"),
)

# A staged rollout of one image to a registry or to a list of its devices. `spec` holds what
# the operator asked for (stages, threshold, minimum stage size, device ids); `stage` is the
# index of the stage under way and only moves forward (compare and set).
rollouts = Table(
    "rollouts",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("registry_pk", Integer, ForeignKey("registries.pk", ondelete="CASCADE"), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("spec", Json, nullable=False),
    Column("stage", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_rollouts_registry", "registry_pk", "state"),
)

# The device bridges' TLS material that ironcore generated for the servers sharing this
# database: `ca` (the local CA) and `server` (the server certificate chain). Keys are PKCS#8
# PEM encrypted under the cluster's secret key; only certificates are in clear.
bridge_tls = Table(
    "bridge_tls",
    metadata,
    Column("name", String(16), primary_key=True),
    Column("certificate", Text, nullable=False),
    Column("encrypted_key", LargeBinary, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# The CA each live server's bridge chain leads to (`certificates.anchor`), renewed while the
# server runs: a server whose chain leads elsewhere refuses to start beside them.
bridge_tls_servers = Table(
    "bridge_tls_servers",
    metadata,
    Column("server_id", String(64), primary_key=True),
    Column("anchor", Text, nullable=False),
    Column("seen_at", BigInteger, nullable=False),
)

# IAM policies by resource name (`projects/p/topics/t`, `projects/p/subscriptions/s`, and
# later other kinds): the policy's bindings as JSON, its version and etag. A registry's policy
# is in `iam_policies`, tied to the registry's row. Deleting a resource deletes its policy.
resource_policies = Table(
    "resource_policies",
    metadata,
    Column("name", String(400), primary_key=True),
    Column("policy", Json, nullable=False),
    Column("version", Integer, nullable=False),
    Column("etag", String(64), nullable=False),
)

# Service accounts (ironcore.access.service_accounts): the account, its public keys (the
# private key leaves the server once, in the key file) and the access tokens the token
# endpoint issued, kept as hashes with the key they were issued for.
service_accounts = Table(
    "service_accounts",
    metadata,
    Column("email", String(255), primary_key=True),
    Column("project", String(64), nullable=False),
    Column("account_id", String(30), nullable=False),
    Column("unique_id", String(21), nullable=False, unique=True),
    Column("display_name", String(100), nullable=False),
    Column("roles", Json, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_service_accounts_project", "project"),
)

service_account_keys = Table(
    "service_account_keys",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("email", String(255), nullable=False, index=True),
    Column("public_key", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=False),
)

service_account_tokens = Table(
    "service_account_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("key_id", String(40), nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
)

# The audit log (registry/store/audit.py): append-only; the retention sweep is its only delete.
audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("time", BigInteger, nullable=False),
    Column("project", String(100), nullable=False),
    Column("principal", String(300), nullable=False),
    Column("authentication", String(40), nullable=False),
    Column("address", String(64), nullable=False),
    Column("method", String(200), nullable=False),
    Column("resource", String(1000), nullable=False),
    Column("status", String(40), nullable=False),
    Column("detail", Json, nullable=False),
    Index("ix_audit_log_project_id", "project", "id"),
    Index("ix_audit_log_time", "time"),
)
