"""The claims each verified attestation produced, kept for the audit log's readers.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attested_claims",
        sa.Column("evidence_digest", sa.String(64), primary_key=True),
        sa.Column("tee", sa.String(32), nullable=False),
        sa.Column("platform", sa.String(80)),
        sa.Column("claims", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("attested_claims")
