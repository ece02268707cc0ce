"""outbound queue runner: the delay warning flag

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 10:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing entries get false: at worst a sender whose entry was queued before the upgrade
    # gets one "delayed" DSN, never more.
    with op.batch_alter_table("outbound_queue", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("delay_warned", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("outbound_queue", schema=None) as batch_op:
        batch_op.drop_column("delay_warned")
