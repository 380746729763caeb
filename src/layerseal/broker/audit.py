"""The hash-chained audit log: canonical row content, chaining and verification (pure).

Each row's hash is ``sha256(prev_hash_hex || JCS(row content))``; the first row chains to
64 zeros.  Editing a row breaks its hash, removing one breaks the next row's link, and
removing rows at the end is caught by the chain head (last seq and hash) kept apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from layerseal.attest.jcs import canonicalize

GENESIS = "0" * 64
CONTENT_FIELDS = (
    "seq",
    "at_ms",
    "actor",
    "action",
    "decision",
    "tenant",
    "keys",
    "evidence_digest",
    "measurement",
    "reason",
)


def chain_hash(prev_hash: str, content: Mapping[str, Any]) -> str:
    body = canonicalize({k: content.get(k) for k in CONTENT_FIELDS})
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


@dataclass(frozen=True)
class AuditRow:
    content: Mapping[str, Any]
    prev_hash: str
    row_hash: str

    @property
    def seq(self) -> int:
        return int(self.content["seq"])


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    rows: int
    head_hash: str
    problems: tuple[str, ...] = field(default=())


def verify_chain(rows: Iterable[AuditRow], head: tuple[int, str] | None) -> ChainReport:
    """Check every link; *head* is the stored (last seq, last hash) or None if absent."""
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    count = 0
    for row in rows:
        count += 1
        if row.seq != expected_seq:
            problems.append(f"row seq: expected {expected_seq}, seen {row.seq} (rows removed or reordered)")
            expected_seq = row.seq
        if row.prev_hash != prev:
            problems.append(f"row {row.seq} prev_hash: expected {prev[:16]}..., seen {row.prev_hash[:16]}...")
        recomputed = chain_hash(row.prev_hash, row.content)
        if recomputed != row.row_hash:
            problems.append(
                f"row {row.seq} hash: expected {recomputed[:16]}... from its content, "
                f"seen {row.row_hash[:16]}... (row edited)"
            )
        prev = row.row_hash
        expected_seq += 1
    last_seq = expected_seq - 1
    if head is None:
        if count:
            problems.append("chain head: expected a head record, seen none")
    else:
        if head[0] != last_seq:
            problems.append(f"chain head seq: expected {head[0]}, seen last row {last_seq} (rows removed)")
        if head[1] != prev:
            problems.append(f"chain head hash: expected {head[1][:16]}..., seen {prev[:16]}...")
    return ChainReport(not problems, count, prev, tuple(problems))
