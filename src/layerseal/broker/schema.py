"""Database tables (SQLAlchemy Core).  The DDL itself lives in the Alembic migrations.

Times are epoch seconds (float) except the audit log's integer milliseconds, which are
part of the hashed row content and must round-trip exactly on every database.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("token_id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("expires_at", Float),  # None: never
)

layer_keys = Table(
    "layer_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("repository", String(255), nullable=False),
    Column("layer_digest", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("unused_at", Float),
    Column("revoked_at", Float),
)

key_versions = Table(
    "key_versions",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("sealed_kek", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("changed_at", Float, nullable=False),
)

policies = Table(
    "policies",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("scope", String(16), primary_key=True),
    Column("target", String(255), primary_key=True),
    Column("document", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

refvalues = Table(
    "refvalues",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", String(255), primary_key=True),
    Column("created_at", Float, nullable=False),
)

platforms = Table(
    "platforms",
    metadata,
    Column("fingerprint", String(80), primary_key=True),
    Column("tee", String(32), nullable=False),
    Column("certificate", LargeBinary, nullable=False),
    Column("description", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("client", String(64), nullable=False),
    Column("tee", String(32), nullable=False),
    Column("nonce", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("token_jti", String(64)),
    Column("claims", Text),
    Column("tee_pubkey", Text),
    Column("evidence_digest", String(64)),
)

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
)

secrets = Table(
    "secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

# One hash chain per writing process (``chain``); ``id`` is a global paging cursor only.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("chain", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", String(32), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("tenant", String(64)),
    Column("keys", Text, nullable=False),
    Column("evidence_digest", String(64)),
    Column("measurement", Text),
    Column("reason", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    UniqueConstraint("chain", "seq", name="uq_audit_log_chain_seq"),
)

# One row per chain: its head, the head's MAC under the audit key, and the writer holding
# a lease on it (a lease only keeps writers apart; the row lock keeps the chain correct).
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("row_hash", String(64), nullable=False),
    Column("mac", String(64)),
    Column("owner", String(32)),
    Column("lease_until", Float),
)

# Signed checkpoints over every chain head, numbered, each naming its predecessor's hash.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
)

# Things created exactly once per deployment (the bootstrap admin token): the primary key
# decides which of several replicas starting together creates it.
bootstrap = Table(
    "bootstrap",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
)

# Bumped in the same transaction as any change to a tenant's policies or reference
# values, so a replica can keep both in memory and re-read them only when this moves.
policy_generations = Table(
    "policy_generations",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("generation", BigInteger, nullable=False),
)

# The claims of each verified attestation, by the evidence digest audit rows name: what a
# release or denial was judged on.  Not part of the hash chain (the chain holds the digest).
attested_claims = Table(
    "attested_claims",
    metadata,
    Column("evidence_digest", String(64), primary_key=True),
    Column("tee", String(32), nullable=False),
    Column("platform", String(80)),
    Column("claims", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Per API token: an optional expiry and the last time it authenticated (written at most
# once a minute per token, so a busy publisher does not turn reads into writes).
api_token_meta = Table(
    "api_token_meta",
    metadata,
    Column("token_id", String(32), primary_key=True),
    Column("expires_at", Float),
    Column("last_used_at", Float),
)
