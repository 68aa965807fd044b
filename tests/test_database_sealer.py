"""Every server sharing a database holds the secret key its secrets are sealed under: a server
with another key refuses to start, with or without TLS listeners, rather than sealing push
secrets that the other servers cannot open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ironcore.registry.store import Store
from ironcore.registry.store.bridge_tls import BridgeTlsStore
from ironcore.registry.store.pubsub import PubSubStore
from ironcore.routing.pubsub import PubSub
from ironcore.routing.sealing import Sealer
from ironcore.runtime.process import CannotStart
from ironcore.runtime.tls import database_sealer
from ironcore.settings import Settings
from tests.conftest import Database, free_ports, start_server, stop_server

KEY_A = "a" * 64
KEY_B = "b" * 64
TOPIC = "projects/p/topics/telemetry"


def key_file(directory: Path, secret: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "secret-key"
    path.write_text(secret + "\n")
    return path


def settings(database: Database, data_dir: Path, secret_file: Path | None) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(
        data_dir=data_dir,
        database_url=database.url,
        database_schema=database.schema or "",
        secret_key_file=secret_file,
    )


async def sealer_of(database: Database, chosen: Settings) -> Sealer:
    store = await Store.open(database.url, database.schema)
    try:
        return await database_sealer(chosen, store)
    finally:
        await store.close()


async def key_check_stored(database: Database) -> bool:
    store = await Store.open(database.url, database.schema)
    try:
        return await BridgeTlsStore(store).get("secret-check") is not None
    finally:
        await store.close()


def test_a_server_with_another_key_is_refused(tmp_path: Path, database: Database) -> None:
    first = asyncio.run(sealer_of(database, settings(database, tmp_path / "a", None)))
    # The first server made its key where it keeps its data, and the database remembers it.
    made = tmp_path / "a" / "secret-key"
    assert made.stat().st_mode & 0o777 == 0o600
    assert asyncio.run(key_check_stored(database))

    same = asyncio.run(sealer_of(database, settings(database, tmp_path / "b", made)))
    assert same.open(first.seal("shared")) == "shared"

    other = key_file(tmp_path / "c", KEY_B)
    with pytest.raises(CannotStart, match="does not open the secrets kept in the database") as no:
        asyncio.run(sealer_of(database, settings(database, tmp_path / "c", other)))
    assert "--secret-key-file" in str(no.value)

    # A later server without a key is not given a new one of its own.
    with pytest.raises(CannotStart, match="no secret key at"):
        asyncio.run(sealer_of(database, settings(database, tmp_path / "d", None)))
    assert not (tmp_path / "d" / "secret-key").exists()


def test_push_secrets_sealed_before_the_check_name_their_key(
    tmp_path: Path, database: Database
) -> None:
    """A database from before the key check: a sealed push secret tells whose key sealed it."""

    async def sealed_push_subscription() -> None:
        store = await Store.open(database.url, database.schema)
        try:
            pubsub = PubSub(PubSubStore(store), sealer=Sealer(KEY_A.encode()))
            await pubsub.create_topic(TOPIC)
            await pubsub.create_subscription(
                "projects/p/subscriptions/pushed", TOPIC, push_endpoint="https://example.com/push"
            )
        finally:
            await store.close()

    asyncio.run(sealed_push_subscription())
    wrong = settings(database, tmp_path / "b", key_file(tmp_path / "b", KEY_B))
    with pytest.raises(CannotStart, match="does not open the secrets kept in the database"):
        asyncio.run(sealer_of(database, wrong))
    # The refused key left no check behind: the right key still starts.
    assert not asyncio.run(key_check_stored(database))
    right = settings(database, tmp_path / "a", key_file(tmp_path / "a", KEY_A))
    asyncio.run(sealer_of(database, right))
    assert asyncio.run(key_check_stored(database))


@pytest.mark.databases("postgresql")
def test_a_cluster_without_tls_listeners_refuses_a_server_with_another_key(
    tmp_path: Path, database: Database
) -> None:
    def plain(secret: str) -> list[str]:
        (mqtt,) = free_ports(1)
        name = secret[0]
        return [
            "--secret-key-file",
            str(key_file(tmp_path / f"key-{name}", secret)),
            "--mqtt-port",
            "0",
            "--insecure-mqtt-port",
            str(mqtt),
        ]

    first = start_server(tmp_path / "a", database, plain(KEY_A))
    try:
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "admin-token").write_text(first.token)
        with pytest.raises(RuntimeError) as refused:
            start_server(tmp_path / "b", database, plain(KEY_B))
        assert "does not open the secrets kept in the database" in str(refused.value)
    finally:
        assert stop_server(first) == 0
