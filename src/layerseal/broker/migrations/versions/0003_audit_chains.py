"""Audit chains per writer with keyed heads and signed checkpoints; the bootstrap table.

``audit_log`` gains a global ``id`` (paging) and a ``chain`` column; existing rows become
chain 1 unchanged, so their hashes still verify.  The table is rebuilt (SQLite cannot
change a primary key in place).

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ROW_COLUMNS = ", ".join(
    (
        "seq, at_ms, actor, action, decision, tenant, keys",
        "evidence_digest, measurement, reason, prev_hash, row_hash",
    )
)


def upgrade() -> None:
    op.create_table(
        "audit_log_v3",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("chain", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("tenant", sa.String(64)),
        sa.Column("keys", sa.Text, nullable=False),
        sa.Column("evidence_digest", sa.String(64)),
        sa.Column("measurement", sa.Text),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("chain", "seq", name="uq_audit_log_chain_seq"),
    )
    # column names are constants
    copy = f"INSERT INTO audit_log_v3 (id, chain, {_ROW_COLUMNS}) "
    copy += f"SELECT seq, 1, {_ROW_COLUMNS} FROM audit_log"  # noqa: S608
    op.execute(sa.text(copy + " ORDER BY seq"))
    op.drop_table("audit_log")
    op.rename_table("audit_log_v3", "audit_log")
    if op.get_bind().dialect.name == "postgresql":
        # ids were copied from seq: move the sequence past them
        op.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence('audit_log', 'id'), "
                "COALESCE((SELECT MAX(id) FROM audit_log), 0) + 1, false)"
            )
        )
    op.add_column("audit_head", sa.Column("mac", sa.String(64)))
    op.add_column("audit_head", sa.Column("owner", sa.String(32)))
    op.add_column("audit_head", sa.Column("lease_until", sa.Float))
    op.create_table(
        "audit_checkpoints",
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "bootstrap",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    # a deployment that already has an admin token is already bootstrapped
    op.execute(
        sa.text(
            "INSERT INTO bootstrap (name, value, created_at) "
            "SELECT 'admin-token', token_id, created_at FROM api_tokens WHERE tenant = '*' "
            "ORDER BY created_at LIMIT 1"
        )
    )


def downgrade() -> None:
    raise NotImplementedError("audit chains: a log with several chains cannot go back to one")
