"""The servers sharing a database present one bridge CA and server certificate, kept in the
database with its keys encrypted; a server given material of another CA refuses to start."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from ironcore.access.tokens import AdminTokens
from ironcore.bridge import certificates
from ironcore.registry.store import Store
from ironcore.registry.store.bridge_tls import BridgeTlsStore, Material
from ironcore.runtime.process import CannotStart
from ironcore.runtime.tls import join_cluster
from ironcore.settings import Settings
from tests.conftest import Database, Server, start_server, stop_server, wait_for

NAME = "iot.example.com"


def served_chain(server: Server, ca_file: Path, hostname: str = "localhost") -> bytes:
    """The certificate a device trusting `ca_file` is shown by the server's MQTT bridge (the
    handshake verifies it, `hostname` included)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", server.mqtt_port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def answers_as(server: Server, ca_file: Path, hostname: str) -> bool:
    """Whether the server's certificate is valid for `hostname`, to a device trusting
    `ca_file`."""
    try:
        served_chain(server, ca_file, hostname)
    except ssl.SSLCertVerificationError:
        return False
    return True


async def join(database: Database, data_dir: Path, secret_file: Path) -> str:
    """What a server's start does to join the cluster's TLS, in this process."""
    settings = Settings(
        data_dir=data_dir,
        database_url=database.url,
        database_schema=database.schema or "",
        secret_key_file=secret_file,
    )
    store = await Store.open(database.url, database.schema)
    try:
        return await join_cluster(settings, store, "in-process")
    finally:
        await store.close()


def foreign_certificate(directory: Path) -> tuple[Path, Path]:
    """A server certificate and key issued by a CA of its own, as an operator's files."""
    ca_cert, ca_key = certificates.new_ca()
    key, chain = certificates.issue_server(ca_key, ca_cert, ["localhost", "127.0.0.1"])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "server.crt").write_bytes(chain)
    (directory / "server.key").write_bytes(certificates.key_pem(key))
    return directory / "server.crt", directory / "server.key"


@pytest.mark.databases("postgresql")
def test_a_server_without_mqtt_serves_grpc_with_the_cluster_certificate(
    database: Database, tmp_path: Path
) -> None:
    """The gRPC API presents the bridges' certificate, which a server sharing its database
    gets by joining the cluster: it must join with its MQTT bridge off too."""
    server = start_server(tmp_path / "a", database, extra=["--mqtt-port", "0"], grpc=True)
    try:
        context = ssl.create_default_context(cafile=str(server.ca_file))
        with (
            socket.create_connection(("127.0.0.1", server.grpc_port), timeout=5) as sock,
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            assert tls.getpeercert() is not None
    finally:
        stop_server(server)


@pytest.mark.databases("postgresql")
def test_servers_started_together_share_one_ca_and_refuse_other_material(
    tmp_path: Path, database: Database
) -> None:
    secret = tmp_path / "cluster-secret"
    secret.write_text("0123456789abcdef" * 4 + "\n")

    # Only the first server on a database writes the first admin token; both need one.
    async def first_token() -> str:
        store = await Store.open(database.url, database.schema)
        try:
            return await AdminTokens(store).create("owner", "test")
        finally:
            await store.close()

    token = asyncio.run(first_token())
    for name in "abcf":
        (tmp_path / name).mkdir()
        (tmp_path / name / "admin-token").write_text(token)
    shared = ["--secret-key-file", str(secret)]
    with ThreadPoolExecutor(2) as pool:
        starting = [
            pool.submit(start_server, tmp_path / name, database, shared) for name in ("a", "b")
        ]
        servers = [future.result() for future in starting]
    try:
        a, b = servers
        assert a.ca_file.read_bytes() == b.ca_file.read_bytes()
        # A device that trusts the CA of one server connects to both, shown the same chain.
        assert served_chain(a, a.ca_file) == served_chain(b, a.ca_file)
        assert (a.data_dir / "tls" / "server.crt").read_bytes() == (
            b.data_dir / "tls" / "server.crt"
        ).read_bytes()
        assert not (a.data_dir / "tls" / "ca.key").exists()

        # The database holds the keys encrypted only.
        async def stored() -> Material | None:
            store = await Store.open(database.url, database.schema)
            try:
                return await BridgeTlsStore(store).get("ca")
            finally:
                await store.close()

        ca = asyncio.run(stored())
        assert ca is not None and b"ENCRYPTED PRIVATE KEY" in ca.encrypted_key
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(ca.encrypted_key, None)

        # Material of another CA, beside live servers: refused, naming the problem.
        cert, key = foreign_certificate(tmp_path / "foreign")
        with pytest.raises(RuntimeError) as refused:
            start_server(
                tmp_path / "c", database, [*shared, "--tls-cert", str(cert), "--tls-key", str(key)]
            )
        message = str(refused.value)
        assert "ironcore cannot start: mismatched MQTT bridge TLS" in message
        assert f"--tls-cert {cert}" in message
        assert certificates.anchor(cert.read_bytes()) in message
        assert certificates.anchor(a.ca_file.read_bytes()) in message

        # Without the cluster's secret key, the shared CA cannot be used: refused too.
        # (In process: the same start-up step, without a process start each.)
        (tmp_path / "wrong").write_text("f" * 64)
        for secret_file, problem in [
            (tmp_path / "d" / "secret-key", "no secret key at"),
            (tmp_path / "wrong", "does not decrypt the bridge CA kept in the database"),
        ]:
            with pytest.raises(CannotStart, match=problem) as refusal:
                asyncio.run(join(database, tmp_path / "d", secret_file))
            assert "--secret-key-file" in str(refusal.value)
        assert not (tmp_path / "d" / "tls").exists()

        # A server asking for another hostname issues the shared certificate again, for every
        # name; the others serve it once told to reload (SIGHUP).
        servers.append(start_server(tmp_path / "f", database, [*shared, "--mqtt-hostname", NAME]))
        assert answers_as(servers[-1], a.ca_file, NAME)
        assert not answers_as(a, a.ca_file, NAME)
        os.kill(a.process.pid, signal.SIGHUP)
        wait_for(lambda: answers_as(a, a.ca_file, NAME), what="the reissued certificate")
        assert served_chain(a, a.ca_file) == served_chain(servers[-1], a.ca_file)
    finally:
        for server in servers:
            stop_server(server)


async def test_concurrent_adds_keep_the_first_material(database: Database) -> None:
    stores = [await Store.open(database.url, database.schema) for _ in range(2)]
    try:
        offered = [Material(f"certificate {n}", f"key {n}".encode()) for n in range(2)]
        kept = await asyncio.gather(
            *(
                BridgeTlsStore(store).add("ca", material, 1)
                for store, material in zip(stores, offered, strict=True)
            )
        )
        assert kept[0] == kept[1] and kept[0] in offered
        # Of two servers replacing the same material, the first wins; the other is told.
        newer = [Material(f"newer {n}", b"key") for n in range(2)]
        replaced = await BridgeTlsStore(stores[0]).replace("ca", kept[0], newer[0], 2)
        stale = await BridgeTlsStore(stores[1]).replace("ca", kept[0], newer[1], 3)
        assert replaced == stale == newer[0]
    finally:
        for store in stores:
            await store.close()


@given(
    st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=600).map(
            lambda body: (
                b"-----BEGIN CERTIFICATE-----\n"
                + base64.encodebytes(body)
                + b"-----END CERTIFICATE-----\n"
            )
        ),
    )
)
def test_a_chain_that_is_not_one_is_a_value_error(data: bytes) -> None:
    """What `--tls-cert` names is read by `anchor`: anything but a PEM chain is a ValueError,
    which the start turns into a refusal naming the file."""
    with pytest.raises(ValueError):
        certificates.anchor(data)


async def test_a_tls_cert_that_is_not_a_certificate_is_refused_naming_it(
    tmp_path: Path, database: Database
) -> None:
    garbage = tmp_path / "server.crt"
    garbage.write_bytes(b"not a certificate")
    settings = Settings(
        data_dir=tmp_path,
        database_url=database.url,
        database_schema=database.schema or "",
        tls_cert=garbage,
        tls_key=garbage,
        bus_url="nats://unused:4222",
    )
    store = await Store.open(database.url, database.schema)
    try:
        with pytest.raises(CannotStart, match=f"--tls-cert {garbage}: "):
            await join_cluster(settings, store, "in-process")
    finally:
        await store.close()
