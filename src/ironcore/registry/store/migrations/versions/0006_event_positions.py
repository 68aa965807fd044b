"""event positions: the inserting transaction's id on every event, a subscription's cursor is
(transaction id, event id)

On PostgreSQL `events.xid` defaults to `pg_current_xact_id()` (as a bigint) and the index that
reads a topic in log order becomes (topic, xid, pk); see registry/store/pubsub.py. Existing
events all get this migration's transaction id, and so does every existing subscription's
cursor, so each subscription goes on after the same event as before. On SQLite (one writer at
a time, ids commit in order) both columns are 0 and nothing reads them.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_THIS_TRANSACTION = "(pg_current_xact_id()::text::bigint)"


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.add_column(
        "events",
        sa.Column(
            "xid",
            sa.BigInteger(),
            nullable=False,
            server_default=sa.text(_THIS_TRANSACTION if postgresql else "0"),
        ),
    )
    op.add_column(
        "subscriptions",
        sa.Column("cursor_xid", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    if postgresql:
        op.execute(f"UPDATE subscriptions SET cursor_xid = {_THIS_TRANSACTION}")
        op.create_index("ix_events_topic_xid", "events", ["topic", "xid", "pk"])
        op.drop_index("ix_events_topic", table_name="events")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_events_topic", "events", ["topic", "pk"])
        op.drop_index("ix_events_topic_xid", table_name="events")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("cursor_xid")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("xid")
