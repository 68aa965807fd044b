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
    api_host: str = "0.0.0.0"
    api_port: int = 8080
    # Empty means the embedded SQLite database in the data directory.
    database_url: str = ""
    # PostgreSQL schema for every table (created if missing); keeps deployments or test runs apart.
    database_schema: str = ""
    # NATS server for topics backed by JetStream (nats://host:4222); empty = none.
    nats_url: str = ""
    # Events older than this are deleted from the embedded log (Pub/Sub's default is 7 days).
    event_retention_days: float = 7.0
    # The gRPC API (Google's DeviceManager), over TLS with the bridges' certificate, on the
    # API's host; 0 = off.
    grpc_port: int = 8443
    # Serve the HTTP device bridge on its own port (0: on the API port).
    device_http_port: int = 0
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

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

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
        for name in ("data_dir", "tls_cert", "tls_key"):
            if name in values:
                values[name] = Path(values[name])
        values["mqtt_hostnames"] = tuple(values.get("mqtt_hostnames", ()))
        return cls(**values)
