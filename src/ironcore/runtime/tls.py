"""The device bridges' TLS: the operator's certificate and key, or a local CA and server
certificate that ironcore makes itself (`bridge.certificates`).

A single server on SQLite keeps what it generates in `<data-dir>/tls`, as it always has: no
secret to manage, and the CA devices already trust stays where it was. Servers that may share
their database (`Settings.cluster`: `--bus`, or PostgreSQL) share one CA and server
certificate instead, kept in the database (`registry.store.bridge_tls`) with the private keys
encrypted under the secret key every server of the cluster is given (`--secret-key-file`,
default `<data-dir>/secret-key`). The first server to start makes them (or brings the local CA
it already had, so devices that trust it keep working); the others use them. Each primary
writes the certificates and its copy of the server key to `<data-dir>/tls` for its bridges,
its workers and the operator's tools (`ca.crt` is what devices trust).

A cluster's servers must present chains that lead to the same CA (`certificates.anchor`): each
server records its anchor in the database while it runs (`present`, renewed every
PRESENCE_SECONDS) and refuses to start beside a live server (seen within LIVE_SECONDS) that
records another. Changing a cluster's CA therefore means stopping every server first.

`tls_files` is called when a process starts its MQTT bridge and again on SIGHUP (in a cluster,
after `shared_certificates` wrote the database's current server certificate); reading
`Settings` never writes anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ironcore import logs
from ironcore.bridge import certificates
from ironcore.bridge.mqtt.server import Listener
from ironcore.registry.store import Store
from ironcore.registry.store.bridge_tls import BridgeTlsStore, Material
from ironcore.registry.store.pubsub import PubSubStore
from ironcore.routing.sealing import Sealer, is_sealed
from ironcore.runtime.process import CannotStart
from ironcore.settings import Settings

log = logging.getLogger(__name__)
_throttled = logs.RateLimited(log, 60.0)
# How often a running server renews the record of the CA it presents...
PRESENCE_SECONDS = 10
# ...and how long after its last renewal it still counts as live.
LIVE_SECONDS = 30
# A secret key shorter than this (in bytes, as the file holds it) is refused.
SECRET_MIN_BYTES = 32
# The `bridge_tls` row whose sealed value tells whether a server holds the database's secret key.
_KEY_CHECK = "secret-check"


def tls_files(settings: Settings) -> tuple[Path, Path]:
    """The bridge's certificate chain and key: the operator's; in a cluster, the shared ones
    `join_cluster` wrote at start; otherwise generated ones (the local CA on first start, the
    server certificate again when it lacks a hostname or nears expiry)."""
    if settings.tls_cert and settings.tls_key:
        return settings.tls_cert, settings.tls_key
    if settings.cluster:
        return settings.tls_dir / "server.crt", settings.tls_dir / "server.key"
    return certificates.local_certificates(settings.tls_dir, settings.mqtt_hostnames)


def tls_context(settings: Settings, listening: list[Listener]) -> ssl.SSLContext | None:
    """The TLS context of the bridge's TLS listeners (None without any)."""
    if not any(listener.tls for listener in listening):
        return None
    return certificates.server_context(*tls_files(settings))


async def join_cluster(settings: Settings, store: Store, server_id: str) -> str:
    """At a clustered primary's start: the shared certificates written to `<data-dir>/tls`
    (unless the operator gave `--tls-cert`), this server's anchor recorded, and CannotStart if
    a live server of the cluster presents another. Returns the anchor."""
    tls = BridgeTlsStore(store)
    if settings.tls_cert is not None:
        try:
            anchor = certificates.anchor(settings.tls_cert.read_bytes())
        except (OSError, ValueError) as error:
            raise CannotStart(f"--tls-cert {settings.tls_cert}: {error}") from None
        source = f"--tls-cert {settings.tls_cert}"
    else:
        anchor = await shared_certificates(settings, store)
        source = "the CA generated for this database"
    now = _now()
    await tls.present(server_id, anchor, now)
    others = [
        other
        for other in await tls.seen_since(now - LIVE_SECONDS * 1_000_000)
        if other.server_id != server_id and other.anchor != anchor
    ]
    if others:
        await tls.withdraw(server_id, now - LIVE_SECONDS * 1_000_000)
        raise CannotStart(
            f"mismatched MQTT bridge TLS: this server's certificate chain ({source}) leads to "
            f"CA {anchor!r}, but server {others[0].server_id} sharing this database presents "
            f"one that leads to CA {others[0].anchor!r}; every server of a cluster must present "
            "certificates of the same CA (give them all --tls-cert/--tls-key issued by one CA, "
            "or none of them, to share the CA generated in the database)"
        )
    return anchor


async def stay_in_cluster(store: Store, server_id: str, anchor: str) -> None:
    """Renew this server's record every PRESENCE_SECONDS until cancelled, then withdraw it."""
    tls = BridgeTlsStore(store)
    try:
        while True:
            await asyncio.sleep(PRESENCE_SECONDS)
            try:
                await tls.present(server_id, anchor, _now())
            except Exception as error:  # tried again shortly; serving goes on
                _throttled.warning("renew", "could not renew this server's TLS record: %s", error)
    except asyncio.CancelledError:
        try:
            await tls.withdraw(server_id, _now() - LIVE_SECONDS * 1_000_000)
        except Exception as error:  # it expires by itself after LIVE_SECONDS
            log.warning("could not withdraw this server's TLS record: %s", error)
        raise


async def shared_certificates(settings: Settings, store: Store) -> str:
    """The cluster's CA and server certificate (made or extended here when needed), written to
    `<data-dir>/tls`; returns the CA's anchor. CannotStart when this server lacks the secret
    key they are encrypted under."""
    tls = BridgeTlsStore(store)
    stored_ca = await tls.get("ca")
    # A key is made only for a database that holds nothing sealed yet (`database_sealer`).
    secret = secret_key(settings, create=stored_ca is None and await tls.get(_KEY_CHECK) is None)
    local = certificates.local_ca(settings.tls_dir)
    if stored_ca is None:
        ca_cert, ca_key = local or certificates.new_ca()
        ours = Material(_pem(ca_cert), certificates.encrypt_key(ca_key, secret))
        stored_ca = await tls.add("ca", ours, _now())
        if stored_ca == ours:
            log.warning(
                "%s the device bridges' CA of every server sharing this database; devices "
                "must trust %s",
                "made this server's local CA" if local else "created a CA that is",
                settings.tls_dir / "ca.crt",
            )
    try:
        ca_key = certificates.decrypt_key(stored_ca.encrypted_key, secret)
    except ValueError:
        raise CannotStart(
            f"the secret key in {settings.secret_key_path} does not decrypt the bridge CA "
            "kept in the database: every server sharing a database needs the same secret key "
            "(copy the file of the server that started first, or give each --secret-key-file)"
        ) from None
    ca_cert = x509.load_pem_x509_certificate(stored_ca.certificate.encode())
    if local is not None and local[0] != ca_cert:
        for name in ("ca.crt", "ca.key"):
            os.replace(settings.tls_dir / name, settings.tls_dir / f"{name}.replaced")
        log.warning(
            "this server's own local CA is not the one its cluster shares: moved it to "
            "%s/ca.crt.replaced; devices that trust it must be given %s",
            settings.tls_dir,
            settings.tls_dir / "ca.crt",
        )
    names = certificates.server_names(settings.mqtt_hostnames)
    server = await tls.get("server")
    while server is None or not certificates.covers(server.certificate.encode(), names):
        if server is not None:
            had = certificates.certified_names(
                x509.load_pem_x509_certificate(server.certificate.encode())
            )
            names = sorted({*names, *had})
        key, chain = certificates.issue_server(ca_key, ca_cert, names)
        issued = Material(chain.decode(), certificates.encrypt_key(key, secret))
        if server is None:
            server = await tls.add("server", issued, _now())
        else:
            server = await tls.replace("server", server, issued, _now())
        if server == issued:
            log.info("issued the cluster's bridge server certificate for %s", ", ".join(names))
    server_key = certificates.decrypt_key(server.encrypted_key, secret)
    certificates.write_ca(settings.tls_dir, ca_cert, None)
    certificates.write_server(
        settings.tls_dir, server.certificate.encode(), certificates.key_pem(server_key)
    )
    return certificates.anchor(stored_ca.certificate.encode())


def secret_key(settings: Settings, create: bool) -> bytes:
    """The cluster's secret key (the bridges' generated TLS keys and push subscriptions'
    signing secrets are encrypted under it); made in `<data-dir>/secret-key` when `create`
    (nothing is encrypted under one yet) and no file was named."""
    path = settings.secret_key_path
    if not path.exists():
        if not create:
            raise CannotStart(
                f"no secret key at {path}: the bridge CA kept in the database is encrypted "
                "under the secret key of the server that started first; give this server a "
                "copy of it (--secret-key-file)"
            )
        if settings.secret_key_file is not None:
            raise CannotStart(f"--secret-key-file {path} does not exist")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_hex(32) + "\n")
            log.warning(
                "created the secret key in %s (mode 0600): secrets kept in the database are "
                "encrypted under it; back it up apart from the database%s",
                path,
                ", and give every server sharing this database a copy (--secret-key-file)"
                if settings.cluster
                else "",
            )
    secret = path.read_bytes().strip()
    if len(secret) < SECRET_MIN_BYTES:
        raise CannotStart(
            f"the secret key in {path} has {len(secret)} bytes; it needs at least "
            f"{SECRET_MIN_BYTES} (e.g. `openssl rand -hex 32 > {path}`)"
        )
    return secret


async def database_sealer(settings: Settings, store: Store) -> Sealer:
    """The sealer of the secrets kept in the database, under the secret key every server
    sharing it must hold. The first server to start stores a value sealed under its key; a
    server whose key does not open it refuses to start, rather than sealing secrets that the
    others cannot open (a cluster without TLS listeners never compares keys otherwise)."""
    tls = BridgeTlsStore(store)
    check = await tls.get(_KEY_CHECK)
    sealer = Sealer(secret_key(settings, create=check is None))
    try:
        if check is None:
            # A database from before the check: its push secrets tell whose key sealed them.
            for subscription in await PubSubStore(store).list_subscriptions(""):
                if is_sealed(subscription.push_secret):
                    sealer.open(subscription.push_secret)
            check = await tls.add(
                _KEY_CHECK, Material("", sealer.seal(_KEY_CHECK).encode()), _now()
            )
        sealer.open(check.encrypted_key.decode())
    except ValueError:
        raise CannotStart(
            f"the secret key in {settings.secret_key_path} does not open the secrets kept in "
            "the database: they were sealed under another server's secret key; every server "
            "sharing a database needs the same one (copy the file of the server that started "
            "first, or give each --secret-key-file)"
        ) from None
    return sealer


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _now() -> int:
    return int(time.time() * 1_000_000)
