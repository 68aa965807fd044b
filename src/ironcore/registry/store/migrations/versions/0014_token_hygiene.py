"""token hygiene: an admin token's optional expiry and the time it was last used

Both in microseconds since the epoch, like the table's other times; NULL for no expiry, and
for a token not used since this revision (`last_used_at` is written behind, see
ironcore.access.callers).

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("admin_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("admin_tokens") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
