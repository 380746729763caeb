"""The keyed, hash-chained audit log: row hashing, head MACs, signed checkpoints (pure).

Rows live in several chains (one per writing process, so replicas never wait on each
other's lock).  In a chain each row's hash is ``sha256(prev_hash_hex || JCS(row content))``;
the first row of chain 1 chains to 64 zeros, of chain *n* to :func:`genesis`.  Editing a
row breaks its hash, removing one breaks the next row's link.

Nothing of that needs a secret, so on its own a chain can be cut at the end or recomputed
whole.  Two keyed parts close that gap (both derived from one secret sealed under the
master key's custody, see :class:`AuditKeys`):

* every chain head carries ``HMAC(mac key, chain, seq, head hash)``: moving or recomputing a
  head needs the key;
* signed checkpoints (Ed25519 over the Merkle root of every chain head, each naming the
  previous checkpoint's hash) are written periodically and exported by the operator; a
  checkpoint kept elsewhere exposes any cut or rewrite of rows it covers, even one that
  restores a head (with its MAC) the attacker copied earlier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from layerseal.errors import BadInputError
from layerseal.wire.b64 import b64decode, b64url_decode
from layerseal.wire.jcs import canonicalize
from layerseal.wire.jsonload import loads

GENESIS = "0" * 64
CHECKPOINT_FORMAT = "layerseal-audit-checkpoint/1"
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


def genesis(chain: int) -> str:
    """The hash a chain's first row links to (chain 1 keeps the single-chain zeros)."""
    if chain == 1:
        return GENESIS
    return hashlib.sha256(f"layerseal audit chain {chain}".encode()).hexdigest()


def chain_hash(prev_hash: str, content: Mapping[str, Any]) -> str:
    body = canonicalize({k: content.get(k) for k in CONTENT_FIELDS})
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


@dataclass(frozen=True)
class AuditRow:
    content: Mapping[str, Any]
    prev_hash: str
    row_hash: str
    chain: int = 1
    id: int = 0  # global position (paging cursor); not part of the chain

    @property
    def seq(self) -> int:
        return int(self.content["seq"])


@dataclass(frozen=True)
class Head:
    """A chain's stored head record."""

    chain: int
    seq: int
    row_hash: str
    mac: str | None


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    rows: int
    head_hash: str
    problems: tuple[str, ...] = field(default=())
    chains: int = 1
    checkpoints: int = 0


class AuditKeys:
    """The head MAC key and the checkpoint signing key, both derived from one 32-byte secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise BadInputError(f"audit key: expected 32 bytes, seen {len(secret)}")
        self._mac_key = _derive(secret, b"layerseal audit head mac")
        self._signer = Ed25519PrivateKey.from_private_bytes(_derive(secret, b"layerseal audit checkpoint"))
        raw = self._signer.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = base64.b64encode(raw).decode()
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"AuditKeys(key_id={self.key_id})"

    def head_mac(self, chain: int, seq: int, row_hash: str) -> str:
        msg = canonicalize({"chain": chain, "seq": seq, "head": row_hash})
        return hmac.new(self._mac_key, b"layerseal audit head\0" + msg, hashlib.sha256).hexdigest()

    def head_ok(self, head: Head) -> bool:
        return head.mac is not None and hmac.compare_digest(
            head.mac, self.head_mac(head.chain, head.seq, head.row_hash)
        )

    def sign(self, payload: Mapping[str, Any]) -> str:
        return base64.urlsafe_b64encode(self._signer.sign(_signed_bytes(payload))).decode().rstrip("=")


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _signed_bytes(payload: Mapping[str, Any]) -> bytes:
    return b"layerseal audit checkpoint\0" + canonicalize(dict(payload))


# ---------------------------------------------------------------- Merkle tree (RFC 6962 shape)


def _leaf(chain: int, seq: int, head: str) -> bytes:
    return hashlib.sha256(b"\0" + canonicalize({"chain": chain, "seq": seq, "head": head})).digest()


def _tree(nodes: Sequence[bytes]) -> bytes:
    if not nodes:
        return hashlib.sha256(b"").digest()
    if len(nodes) == 1:
        return nodes[0]
    split = 1 << ((len(nodes) - 1).bit_length() - 1)  # largest power of two below len
    return hashlib.sha256(b"\1" + _tree(nodes[:split]) + _tree(nodes[split:])).digest()


def merkle_root(heads: Iterable[tuple[int, int, str]]) -> str:
    """The root over (chain, seq, head hash) leaves in chain order."""
    return _tree([_leaf(c, s, h) for c, s, h in sorted(heads)]).hex()


# ---------------------------------------------------------------- checkpoints


def make_checkpoint(
    keys: AuditKeys, heads: Iterable[Head], *, number: int, prev: str, at_ms: int
) -> dict[str, Any]:
    """A signed checkpoint document over *heads* (chains without rows are left out)."""
    chains = sorted((h.chain, h.seq, h.row_hash) for h in heads if h.seq > 0)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "number": number,
        "prev": prev,
        "at_ms": at_ms,
        "chains": [{"chain": c, "seq": s, "head": h} for c, s, h in chains],
        "root": merkle_root(chains),
        "key_id": keys.key_id,
        "public_key": keys.public_key,
    }
    return {"payload": payload, "signature": keys.sign(payload)}


def checkpoint_hash(body: str) -> str:
    """What the next checkpoint's ``prev`` names: the hash of this one's stored text."""
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose signature and root were checked."""

    number: int
    prev: str
    at_ms: int
    heads: tuple[tuple[int, int, str], ...]  # (chain, seq, head hash)


def parse_checkpoint(text: str, keys: AuditKeys | None, where: str) -> Checkpoint:
    """Check a checkpoint document's shape, root and signature (by *keys*, when given).

    Raises ``BadInputError`` naming *where* and the failing check.
    """
    try:
        doc = loads(text, where, expected="a layerseal audit checkpoint (JSON)")
        payload = doc["payload"]
        sig = b64url_decode(doc["signature"], f"{where} signature")
        if payload["format"] != CHECKPOINT_FORMAT:
            raise BadInputError(
                f"{where}: expected format {CHECKPOINT_FORMAT!r}, seen {str(payload['format'])[:40]!r}"
            )
        heads = tuple((int(c["chain"]), int(c["seq"]), str(c["head"])) for c in payload["chains"])
        number, prev, at_ms = int(payload["number"]), str(payload["prev"]), int(payload["at_ms"])
        public = b64decode(payload["public_key"], f"{where} public_key")
        root = str(payload["root"])
    except BadInputError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInputError(
            f"{where}: expected a layerseal audit checkpoint (JSON), seen {exc!r}"[:300]
        ) from exc
    if keys is not None and payload["public_key"] != keys.public_key:
        raise BadInputError(
            f"{where}: expected a checkpoint signed by this broker's audit key {keys.key_id}, "
            f"seen key {str(payload.get('key_id'))[:20]}"
        )
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, _signed_bytes(payload))
    except (InvalidSignature, ValueError) as exc:
        raise BadInputError(f"{where}: expected a valid signature, seen one that does not verify") from exc
    if merkle_root(heads) != root:
        raise BadInputError(f"{where}: expected the root of its chain heads, seen {root[:16]}...")
    return Checkpoint(number, prev, at_ms, heads)


# ---------------------------------------------------------------- verification


def _check_links(
    rows: Iterable[AuditRow], prev: str, expected: int, name: str, problems: list[str]
) -> tuple[str, int, int]:
    """Check consecutive rows of one chain from (prev hash, expected seq); returns the state
    after them and how many rows there were."""
    count = 0
    for row in rows:
        count += 1
        if row.seq != expected:
            problems.append(f"{name}row seq: expected {expected}, seen {row.seq} (rows removed or reordered)")
            expected = row.seq
        if row.prev_hash != prev:
            problems.append(
                f"{name}row {row.seq} prev_hash: expected {prev[:16]}..., seen {row.prev_hash[:16]}..."
            )
        recomputed = chain_hash(row.prev_hash, row.content)
        if recomputed != row.row_hash:
            problems.append(
                f"{name}row {row.seq} hash: expected {recomputed[:16]}... from its content, "
                f"seen {row.row_hash[:16]}... (row edited)"
            )
        prev = row.row_hash
        expected += 1
    return prev, expected, count


def verify_chain(rows: Iterable[AuditRow], head: tuple[int, str] | None, *, chain: int = 1) -> ChainReport:
    """Check every link of one chain; *head* is its stored (last seq, last hash) or None."""
    problems: list[str] = []
    name = "" if chain == 1 else f"chain {chain} "
    prev, expected, count = _check_links(rows, genesis(chain), 1, name, problems)
    last_seq = expected - 1
    if head is None:
        if count:
            problems.append(f"{name}chain head: expected a head record, seen none")
    else:
        if head[0] != last_seq:
            problems.append(
                f"{name}chain head seq: expected {head[0]}, seen last row {last_seq} (rows removed)"
            )
        if head[1] != prev:
            problems.append(f"{name}chain head hash: expected {head[1][:16]}..., seen {prev[:16]}...")
    return ChainReport(not problems, count, prev, tuple(problems))


class LogVerifier:
    """Verifies a whole log streamed chain by chain: links, keyed heads and checkpoints.

    Feed rows ordered by (chain, seq) to :meth:`row`, then call :meth:`finish`.  Memory is
    one entry per (chain, seq) pinned by a checkpoint, not per row.
    """

    def __init__(
        self, keys: AuditKeys, heads: Iterable[Head], checkpoints: Iterable[tuple[str, Checkpoint]]
    ) -> None:
        self.keys = keys
        self.heads = {h.chain: h for h in heads}
        self.problems: list[str] = []
        # (chain, seq) -> [(checkpoint name, expected hash)]
        self.pins: dict[tuple[int, int], list[tuple[str, str]]] = {}
        self.checkpoints = 0
        for name, cp in checkpoints:
            self.checkpoints += 1
            for chain, seq, head in cp.heads:
                self.pins.setdefault((chain, seq), []).append((name, head))
        self.rows = 0
        self._chain: int | None = None
        self._chain_rows: list[AuditRow] = []
        self._state: dict[int, tuple[str, int]] = {}  # chain -> (last hash, next seq)
        self._seen: set[int] = set()

    def row(self, row: AuditRow) -> None:
        if row.chain != self._chain:
            self._close_chain()
            self._chain = row.chain
        self._chain_rows.append(row)
        if len(self._chain_rows) >= 10000:
            self._flush(final=False)
        pins = self.pins.get((row.chain, row.seq))
        if pins:
            for name, want in pins:
                if want != row.row_hash:
                    self.problems.append(
                        f"chain {row.chain} row {row.seq}: expected hash {want[:16]}... as {name} "
                        f"recorded, seen {row.row_hash[:16]}... (rows rewritten)"
                    )
            del self.pins[(row.chain, row.seq)]

    # chains are checked in slices so a long chain is never held whole in memory
    def _flush(self, *, final: bool) -> None:
        assert self._chain is not None
        chain = self._chain
        prev, expected = self._state.get(chain, (genesis(chain), 1))
        prev, expected, count = _check_links(
            self._chain_rows, prev, expected, f"chain {chain} ", self.problems
        )
        self.rows += count
        self._state[chain] = (prev, expected)
        self._chain_rows = []
        if final:
            self._check_head(chain, prev, expected - 1)

    def _close_chain(self) -> None:
        if self._chain is not None:
            self._flush(final=True)
        self._chain = None

    def _check_head(self, chain: int, last_hash: str, last_seq: int) -> None:
        head = self.heads.get(chain)
        if head is None:
            self.problems.append(f"chain {chain}: expected a head record, seen none (head removed)")
            return
        self._seen.add(chain)
        if head.seq != last_seq:
            self.problems.append(
                f"chain {chain} head seq: expected {head.seq}, seen last row {last_seq} (rows removed)"
            )
        if head.row_hash != last_hash:
            self.problems.append(
                f"chain {chain} head hash: expected {head.row_hash[:16]}..., seen {last_hash[:16]}..."
            )

    def finish(self) -> ChainReport:
        self._close_chain()
        for chain, head in sorted(self.heads.items()):
            if chain not in self._seen and head.seq != 0:
                self.problems.append(
                    f"chain {chain} head seq: expected {head.seq}, seen no rows (rows removed)"
                )
            if head.mac is None:
                self.problems.append(
                    f"chain {chain} head: expected a MAC by the audit key, seen none (head reset?)"
                )
            elif not self.keys.head_ok(head):
                self.problems.append(
                    f"chain {chain} head: expected a MAC by the audit key {self.keys.key_id}, seen one "
                    "that does not match (head moved or chain recomputed without the key)"
                )
        # pins left over name rows that are gone
        missing: dict[tuple[int, str], int] = {}
        for (chain, seq), pins in self.pins.items():
            for name, _ in pins:
                missing[(chain, name)] = max(missing.get((chain, name), 0), seq)
        for (chain, name), seq in sorted(missing.items()):
            seen = self._state.get(chain, ("", 1))[1] - 1
            what = "chain removed" if chain not in self.heads and seen == 0 else "rows removed"
            self.problems.append(
                f"chain {chain}: expected rows up to seq {seq} as {name} recorded, seen {seen} ({what})"
            )
        root = merkle_root((h.chain, h.seq, h.row_hash) for h in self.heads.values() if h.seq > 0)
        return ChainReport(
            not self.problems,
            self.rows,
            root,
            tuple(self.problems),
            chains=len(self.heads),
            checkpoints=self.checkpoints,
        )
