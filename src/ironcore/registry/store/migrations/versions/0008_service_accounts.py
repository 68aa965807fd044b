"""service accounts: accounts, their public keys, and the access tokens issued for them

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_accounts",
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=30), nullable=False),
        sa.Column("unique_id", sa.String(length=21), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        sa.Column(
            "roles", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("email"),
        sa.UniqueConstraint("unique_id"),
    )
    op.create_index("ix_service_accounts_project", "service_accounts", ["project"])
    op.create_table(
        "service_account_keys",
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id"),
    )
    op.create_index("ix_service_account_keys_email", "service_account_keys", ["email"])
    op.create_table(
        "service_account_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(
        "ix_service_account_tokens_expires_at", "service_account_tokens", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_table("service_account_tokens")
    op.drop_table("service_account_keys")
    op.drop_table("service_accounts")
