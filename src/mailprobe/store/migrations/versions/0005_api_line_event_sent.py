"""A job line remembers whether its per-address webhook event is done (delivered, or given
up after its attempts), so a server restarted before sending it sends it then.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_job_lines") as table:
        table.add_column(sa.Column("event_done", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_job_lines") as table:
        table.drop_column("event_done")
