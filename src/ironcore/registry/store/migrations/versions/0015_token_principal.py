"""token principal: the IAM member an admin token acts as

`adminToken:<id>` for a token of its own (every token before this revision), or
`user:<email>` for a token of a person, whose tokens then share the bindings naming that user.

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("admin_tokens") as batch:
        batch.add_column(sa.Column("principal", sa.String(300), nullable=True))
    op.execute("UPDATE admin_tokens SET principal = 'adminToken:' || id")
    with op.batch_alter_table("admin_tokens") as batch:
        batch.alter_column("principal", existing_type=sa.String(300), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("admin_tokens") as batch:
        batch.drop_column("principal")
