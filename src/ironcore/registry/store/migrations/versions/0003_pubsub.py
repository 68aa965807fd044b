"""pubsub: topics, subscriptions and leases of the embedded event log

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "topics",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("backend", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "subscriptions",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("ack_deadline_seconds", sa.Integer(), nullable=False),
        sa.Column("push_endpoint", sa.Text(), nullable=False),
        sa.Column("push_secret", sa.Text(), nullable=False),
        sa.Column("dead_letter_topic", sa.String(length=300), nullable=False),
        sa.Column("max_delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "subscription_leases",
        sa.Column("subscription_pk", sa.Integer(), nullable=False),
        sa.Column("event_pk", sa.BigInteger(), nullable=False),
        sa.Column("deadline", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["subscription_pk"], ["subscriptions.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("subscription_pk", "event_pk"),
    )
    op.create_index(
        "ix_subscription_leases_deadline",
        "subscription_leases",
        ["subscription_pk", "deadline"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_subscription_leases_deadline", table_name="subscription_leases")
    op.drop_table("subscription_leases")
    op.drop_table("subscriptions")
    op.drop_table("topics")
