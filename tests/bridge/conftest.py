"""What the bridge tests share: a server on the test's database, SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Database, Server, start_server, stop_server


@pytest.fixture
def bridge(tmp_path: Path, database: Database) -> Iterator[Server]:
    server = start_server(tmp_path / "data", database)
    yield server
    stop_server(server)
