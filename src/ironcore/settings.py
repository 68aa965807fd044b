"""One settings object for a server process: command-line flags > IRONCORE_* env > defaults.

The CLI reads flags and the environment (typer's `envvar`); everything downstream takes this
object, so there is one place that says what can be configured.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path


def default_data_dir() -> Path:
    return Path(os.environ.get("IRONCORE_DATA_DIR") or Path.home() / ".ironcore")


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    # Loopback by default: another address needs TLS (`api_tls`, or `api_cert`/`api_key`)
    # unless `insecure_api` (`runtime.primary.api_tls_files`).
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # Serve the admin API over TLS with the bridges' certificate (`runtime.tls.tls_files`)...
    api_tls: bool = False
    # ...or with the operator's own certificate chain and key.
    api_cert: Path | None = None
    api_key: Path | None = None
    # Plain HTTP on an address other than loopback, warned about at every start.
    insecure_api: bool = False
    # Empty means the embedded SQLite database in the data directory.
    database_url: str = ""
    # PostgreSQL schema for every table (created if missing); keeps deployments or test runs apart.
    database_schema: str = ""
    # NATS server for topics backed by JetStream (nats://host:4222); empty = none.
    nats_url: str = ""
    # Events older than this are deleted from the embedded log (Pub/Sub's default is 7 days).
    event_retention_days: float = 7.0
    # Audit log entries older than this are deleted (registry/store/audit.py).
    audit_retention_days: float = 400.0
    # Refused calls recorded per client address a minute; beyond it they are counted, not
    # recorded (registry/store/audit.py).
    audit_denials_per_minute: int = 20
    # The gRPC API (Google's DeviceManager), over TLS with the bridges' certificate, on the
    # API's host; 0 = off.
    grpc_port: int = 8443
    # Google's Pub/Sub emulator protocol (plaintext gRPC, Publisher and Subscriber, no
    # credentials: calls act as `access.callers.PUBSUB_EMULATOR`), for clients redirected by
    # PUBSUB_EMULATOR_HOST; 0 = off. Loopback unless `pubsub_emulator_host` says otherwise.
    pubsub_emulator_port: int = 0
    pubsub_emulator_host: str = "127.0.0.1"
    # Calls each gRPC port runs at once (open streams included); beyond it a new call is
    # refused with RESOURCE_EXHAUSTED. Connections per gRPC port: `http_max_connections`.
    grpc_max_concurrent_rpcs: int = 1000
    # The service account (email, or account id if unique) the emulator port's calls act as;
    # empty = `access.callers.PUBSUB_EMULATOR`.
    pubsub_emulator_as: str = ""
    # The URL clients reach the API by (scheme://host[:port]/), where it differs from what a
    # request says (behind a proxy); empty = each request's own. The discovery document's
    # rootUrl.
    public_url: str = ""
    # The HTTP device bridge's own port (0: on the API's listener instead), on its own address
    # (every interface, like MQTT: devices reach it from the network, while the API stays on
    # loopback), over TLS with the bridges' certificate unless `insecure_device_http`.
    device_http_port: int = 8081
    device_http_host: str = "0.0.0.0"
    insecure_device_http: bool = False
    log_format: str = "text"
    log_level: str = "info"
    mqtt_host: str = "0.0.0.0"
    mqtt_port: int = 8883
    # A second TLS port for the bridge (Cloud IoT Core also served 443); 0 = none.
    mqtt_second_port: int = 0
    # A plaintext MQTT port, only for local testing; 0 = none.
    insecure_mqtt_port: int = 0
    # Names devices reach the bridge by, added to the generated server certificate.
    mqtt_hostnames: tuple[str, ...] = ()
    # The operator's own bridge certificate (chain) and key; empty = generate a local CA.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Processes accepting MQTT connections on the same ports (SO_REUSEPORT), this one included.
    mqtt_workers: int = 1
    # NATS joining the servers that share this database (nats://host:4222); empty = none.
    bus_url: str = ""
    # Seconds a server joined by the bus may stay silent before the others take its devices as
    # not connected; it says it is alive every third of it.
    bus_lease_seconds: float = 10.0
    # Every MQTT connection starts with a load balancer's PROXY protocol v2 header naming the
    # client (HAProxy's send-proxy-v2); connections without one, or from a peer not in
    # `trusted_proxies`, are closed.
    mqtt_proxy_protocol: bool = False
    # The load balancers (addresses, CIDR networks) whose X-Forwarded-For (REST, the HTTP
    # device bridge, gRPC metadata) and PROXY protocol headers (MQTT) name the client
    # (`access.forwarded`); empty = nobody, loopback included.
    trusted_proxies: tuple[str, ...] = ()
    # The secret the cluster's generated TLS keys are encrypted under in the database; every
    # server of a cluster needs the same one. None = `<data-dir>/secret-key`.
    secret_key_file: Path | None = None
    # Connections each listener may hold (`runtime.process.Budget`); 0 = derived from the
    # process's open-file limit: what stays after `open_files_reserve`, a tenth of it for each
    # HTTP listener and the rest for MQTT.
    http_max_connections: int = 0
    mqtt_max_connections: int = 0
    # File descriptors kept for everything but listeners' connections (database, NATS, the
    # workers' channels, files); 0 = a tenth of the limit, at least 64.
    open_files_reserve: int = 0
    # An HTTP client must send a request's head within this many seconds of connecting (or of
    # the previous response), and its body at `http_body_min_rate` bytes a second after a
    # grace of `http_body_timeout` seconds, with no pause longer than that grace.
    http_header_timeout: float = 10.0
    http_body_timeout: float = 10.0
    http_body_min_rate: int = 1024
    # An idle kept-alive HTTP connection is closed after this many seconds.
    http_idle_timeout: int = 5

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def secret_key_path(self) -> Path:
        return self.secret_key_file or self.data_dir / "secret-key"

    @property
    def cluster(self) -> bool:
        """Other servers may share this server's database: `--bus` is given, or the database
        is PostgreSQL."""
        return bool(self.bus_url) or not self.effective_database_url.startswith("sqlite")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'ironcore.db'}"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin-token"

    def to_json(self) -> str:
        """For a worker process: the same settings, as text."""
        return json.dumps(
            {
                f.name: str(value) if isinstance(value, Path) else value
                for f in fields(self)
                if (value := getattr(self, f.name)) is not None
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Settings:
        values = json.loads(text)
        for name in ("data_dir", "tls_cert", "tls_key", "secret_key_file", "api_cert", "api_key"):
            if name in values:
                values[name] = Path(values[name])
        values["mqtt_hostnames"] = tuple(values.get("mqtt_hostnames", ()))
        values["trusted_proxies"] = tuple(values.get("trusted_proxies", ()))
        return cls(**values)
