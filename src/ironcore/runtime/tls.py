"""The device bridges' TLS: the operator's certificate and key, or a local CA and server
certificate that ironcore makes itself in `<data-dir>/tls` (`bridge.certificates`).

Called when a process starts its MQTT bridge and again on SIGHUP; reading `Settings` never
writes anything.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ironcore.bridge import certificates
from ironcore.bridge.mqtt.server import Listener
from ironcore.settings import Settings


def tls_files(settings: Settings) -> tuple[Path, Path]:
    """The bridge's certificate chain and key: the operator's, or generated ones (the local CA
    on first start, the server certificate again when it lacks a hostname or nears expiry)."""
    if settings.tls_cert and settings.tls_key:
        return settings.tls_cert, settings.tls_key
    return certificates.local_certificates(settings.tls_dir, settings.mqtt_hostnames)


def tls_context(settings: Settings, listening: list[Listener]) -> ssl.SSLContext | None:
    """The TLS context of the bridge's TLS listeners (None without any)."""
    if not any(listener.tls for listener in listening):
        return None
    return certificates.server_context(*tls_files(settings))
