"""Keep each result's DNS status, so an answer read back knows what DNS said.

A probe of a null-MX or NXDOMAIN domain is decided by DNS, not by a reply; the
row keeps that status so any face that reads it answers as the one that wrote it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

LATEST_VIEW = """
CREATE VIEW latest_verification_results AS
SELECT v.* FROM verification_results v
WHERE v.id = (SELECT MAX(w.id) FROM verification_results w WHERE w.email = v.email)
"""

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The view's "v.*" is fixed when it is created (PostgreSQL): create it again.
    op.execute("DROP VIEW latest_verification_results")
    with op.batch_alter_table("verification_results") as table:
        table.add_column(sa.Column("dns_status", sa.String(length=32), nullable=True))
    op.execute(LATEST_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW latest_verification_results")
    with op.batch_alter_table("verification_results") as table:
        table.drop_column("dns_status")
    op.execute(LATEST_VIEW)
