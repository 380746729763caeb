"""``api_token_meta.expires_at`` goes: a token's expiry is ``api_tokens.expires_at`` alone.

Brokers at 0006 could set an expiry in either table and refused a token past the earlier
one, so before the column is dropped a meta expiry earlier than the token's own (or the
only one) moves into ``api_tokens.expires_at``: no token outlives the expiry it had.
Batch mode: SQLite drops and re-adds columns by rebuilding the table.

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_EARLIER_META_EXPIRY = """
    FROM api_token_meta m
    WHERE m.token_id = api_tokens.token_id AND m.expires_at IS NOT NULL
      AND (api_tokens.expires_at IS NULL OR m.expires_at < api_tokens.expires_at)
"""


def upgrade() -> None:
    op.execute(
        sa.text(
            f"UPDATE api_tokens SET expires_at = (SELECT m.expires_at {_EARLIER_META_EXPIRY}) "  # noqa: S608 -- constant SQL
            f"WHERE EXISTS (SELECT 1 {_EARLIER_META_EXPIRY})"
        )
    )
    with op.batch_alter_table("api_token_meta") as batch:
        batch.drop_column("expires_at")


def downgrade() -> None:
    # the expiries stay in api_tokens.expires_at, which 0006 brokers check as well
    with op.batch_alter_table("api_token_meta") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float, nullable=True))
