"""Keep each result's catch-all finding and shown reason, so a reused result says what it said.

Without them, a reused "risky" accepted answer could only be shown as catch_all,
even when the domain's catch-all check had been inconclusive (catch_all_unknown).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

LATEST_VIEW = """
CREATE VIEW latest_verification_results AS
SELECT v.* FROM verification_results v
WHERE v.id = (SELECT MAX(w.id) FROM verification_results w WHERE w.email = v.email)
"""

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The view's "v.*" is fixed when it is created (PostgreSQL): create it again.
    op.execute("DROP VIEW latest_verification_results")
    with op.batch_alter_table("verification_results") as table:
        table.add_column(sa.Column("catch_all", sa.Boolean(), nullable=True))
        table.add_column(sa.Column("verdict_reason", sa.String(length=32), nullable=True))
    op.execute(LATEST_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW latest_verification_results")
    with op.batch_alter_table("verification_results") as table:
        table.drop_column("verdict_reason")
        table.drop_column("catch_all")
    op.execute(LATEST_VIEW)
