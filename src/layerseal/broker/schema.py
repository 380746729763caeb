"""Database tables (SQLAlchemy Core).  The DDL itself lives in the Alembic migrations.

Times are epoch seconds (float) except the audit log's integer milliseconds, which are
part of the hashed row content and must round-trip exactly on every database.

Each column is written ``"<name> <type> [key] [null] [auto|noauto]"``: types ``str<N>``
(VARCHAR(N)), ``text``, ``float``, ``int``, ``bigint``, ``bytes`` and ``serial`` (BIGINT,
INTEGER on SQLite, so that it autoincrements there); ``key`` marks the primary key,
``null`` a nullable column (all others are NOT NULL), ``auto``/``noauto`` set
``autoincrement``.
"""

from __future__ import annotations

from typing import Any

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
from sqlalchemy.types import TypeEngine

metadata = MetaData()

_TYPES: dict[str, TypeEngine[Any] | type[TypeEngine[Any]]] = {
    "text": Text,
    "float": Float,
    "int": Integer,
    "bigint": BigInteger,
    "bytes": LargeBinary,
    "serial": BigInteger().with_variant(Integer, "sqlite"),
}
_FLAGS = frozenset({"key", "null", "auto", "noauto"})


def _column(spec: str) -> Column[Any]:
    name, kind, *flags = spec.split()
    assert _FLAGS.issuperset(flags), spec
    type_ = String(int(kind[3:])) if kind.startswith("str") else _TYPES[kind]
    options: dict[str, Any] = {}
    if "key" in flags:
        options["primary_key"] = True
    elif "null" not in flags:
        options["nullable"] = False
    if "auto" in flags or "noauto" in flags:
        options["autoincrement"] = "auto" in flags
    return Column(name, type_, **options)


def _table(name: str, *columns: str, unique: tuple[str, tuple[str, ...]] | None = None) -> Table:
    extra = [] if unique is None else [UniqueConstraint(*unique[1], name=unique[0])]
    return Table(name, metadata, *(_column(c) for c in columns), *extra)


api_tokens = _table(
    "api_tokens",
    "token_id str32 key",
    "tenant str64",
    "scopes text",
    "token_hash str64",
    "description text",
    "created_at float",
    "revoked_at float null",
    "expires_at float null",  # None: never
)

layer_keys = _table(
    "layer_keys",
    "key_id str32 key",
    "tenant str64",
    "repository str255",
    "layer_digest str200",
    "created_at float",
    "unused_at float null",
    "revoked_at float null",
)

key_versions = _table(
    "key_versions",
    "key_id str32 key",
    "version int key",
    "status str16",
    "sealed_kek bytes",
    "created_at float",
    "changed_at float",
)

policies = _table(
    "policies",
    "tenant str64 key",
    "scope str16 key",
    "target str255 key",
    "document text",
    "updated_at float",
)

refvalues = _table(
    "refvalues",
    "tenant str64 key",
    "name str64 key",
    "value str255 key",
    "created_at float",
)

platforms = _table(
    "platforms",
    "fingerprint str80 key",
    "tee str32",
    "certificate bytes",
    "description text",
    "created_at float",
)

sessions = _table(
    "sessions",
    "session_id str64 key",
    "client str64",
    "tee str32",
    "nonce str64",
    "state str16",
    "created_at float",
    "expires_at float",
    "token_jti str64 null",
    "claims text null",
    "tee_pubkey text null",
    "evidence_digest str64 null",
)

revoked_tokens = _table("revoked_tokens", "jti str64 key", "expires_at float")

secrets = _table("secrets", "name str64 key", "sealed bytes", "created_at float")

# One hash chain per writing process (``chain``); ``id`` is a global paging cursor only.
audit_log = _table(
    "audit_log",
    "id serial key auto",
    "chain int",
    "seq int",
    "at_ms bigint",
    "actor text",
    "action str32",
    "decision str16",
    "tenant str64 null",
    "keys text",
    "evidence_digest str64 null",
    "measurement text null",
    "reason text",
    "prev_hash str64",
    "row_hash str64",
    unique=("uq_audit_log_chain_seq", ("chain", "seq")),
)

# One row per chain: its head, the head's MAC under the audit key, and the writer holding
# a lease on it (a lease only keeps writers apart; the row lock keeps the chain correct).
audit_head = _table(
    "audit_head",
    "id int key noauto",
    "seq int",
    "row_hash str64",
    "mac str64 null",
    "owner str32 null",
    "lease_until float null",
)

# Signed checkpoints over every chain head, numbered, each naming its predecessor's hash.
audit_checkpoints = _table("audit_checkpoints", "number int key noauto", "at_ms bigint", "body text")

# Things created exactly once per deployment (the bootstrap admin token): the primary key
# decides which of several replicas starting together creates it.
bootstrap = _table("bootstrap", "name str64 key", "value str64", "created_at float")

# Bumped in the same transaction as any change to a tenant's policies or reference
# values, so a replica can keep both in memory and re-read them only when this moves.
policy_generations = _table("policy_generations", "tenant str64 key", "generation bigint")

# The claims of each verified attestation, by the evidence digest audit rows name: what a
# release or denial was judged on.  Not part of the hash chain (the chain holds the digest).
attested_claims = _table(
    "attested_claims",
    "evidence_digest str64 key",
    "tee str32",
    "platform str80 null",
    "claims text",
    "created_at float",
)

# Per API token: the last time it authenticated (written at most once a minute per token,
# so a busy publisher does not turn reads into writes).  Its expiry is api_tokens.expires_at.
api_token_meta = _table("api_token_meta", "token_id str32 key", "last_used_at float null")
