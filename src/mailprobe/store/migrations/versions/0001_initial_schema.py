"""Initial schema: generated_emails, domain_resolutions, mx_hosts, verification_results.

Revision ID: 0001
Revises:
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

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "domain_resolutions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("mx_hosts", sa.JSON(), nullable=False),
        sa.Column("lowest_mx", sa.String(length=255), nullable=True),
        sa.Column("implicit_mx", sa.Boolean(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("ttl", sa.Integer(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mx_behavior", sa.JSON(), nullable=True),
        sa.Column("catch_all", sa.Boolean(), nullable=True),
        sa.Column("catch_all_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("domain"),
    )
    with op.batch_alter_table("domain_resolutions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_domain_resolutions_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "generated_emails",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("local_part", sa.String(length=64), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("person_name", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    with op.batch_alter_table("generated_emails", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_generated_emails_domain"), ["domain"], unique=False)
        batch_op.create_index(batch_op.f("ix_generated_emails_status"), ["status"], unique=False)

    op.create_table(
        "mx_hosts",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("behavior", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("host"),
    )
    op.create_table(
        "verification_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.Column("enhanced_status", sa.String(length=16), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("mx_host", sa.String(length=255), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("elapsed_ms", sa.Integer(), nullable=True),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("transcript", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["email_id"], ["generated_emails.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("verification_results", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_verification_results_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_verification_results_email"), ["email"], unique=False)
        batch_op.create_index("ix_verification_results_email_latest", ["email", "id"], unique=False)

    # Each address's newest result, for readers that want "the" verdict.
    op.execute(LATEST_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW latest_verification_results")
    with op.batch_alter_table("verification_results", schema=None) as batch_op:
        batch_op.drop_index("ix_verification_results_email_latest")
        batch_op.drop_index(batch_op.f("ix_verification_results_email"))
        batch_op.drop_index(batch_op.f("ix_verification_results_created_at"))

    op.drop_table("verification_results")
    op.drop_table("mx_hosts")
    with op.batch_alter_table("generated_emails", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_generated_emails_status"))
        batch_op.drop_index(batch_op.f("ix_generated_emails_domain"))

    op.drop_table("generated_emails")
    with op.batch_alter_table("domain_resolutions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_domain_resolutions_expires_at"))

    op.drop_table("domain_resolutions")
