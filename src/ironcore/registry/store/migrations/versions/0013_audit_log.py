"""the audit log: one append-only row per change, denial and authentication failure

Revision ID: 0013
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("time", sa.BigInteger(), nullable=False),
        sa.Column("project", sa.String(length=100), nullable=False),
        sa.Column("principal", sa.String(length=300), nullable=False),
        sa.Column("authentication", sa.String(length=40), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=200), nullable=False),
        sa.Column("resource", sa.String(length=1000), nullable=False),
        sa.Column("status", sa.String(length=40), nullable=False),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
    )
    op.create_index("ix_audit_log_project_id", "audit_log", ["project", "id"])
    op.create_index("ix_audit_log_time", "audit_log", ["time"])


def downgrade() -> None:
    op.drop_table("audit_log")
