"""API token lifecycle: an optional expiry and the time of last use, per token.

A table of its own rather than new ``api_tokens`` columns: the authentication path keeps
reading the token row it always read, and the usage row is written at most once a minute.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_token_meta",
        sa.Column("token_id", sa.String(32), primary_key=True),
        sa.Column("expires_at", sa.Float),
        sa.Column("last_used_at", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("api_token_meta")
