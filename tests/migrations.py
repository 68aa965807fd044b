"""Moving a test database between schema revisions, as an upgrade from an older ironcore
meets it: alembic's own downgrade, so every later revision is undone in order."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from ironcore.registry.store.database import _MIGRATIONS


def revision_before(revision: str) -> str:
    """The revision `revision` follows."""
    before = ScriptDirectory(str(_MIGRATIONS)).get_revision(revision).down_revision
    assert isinstance(before, str), f"revision {revision} has no single predecessor"
    return before


def downgrade(connection: Connection, revision: str) -> None:
    """Undo every revision after `revision` (run in `AsyncConnection.run_sync`)."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.downgrade(config, revision)
