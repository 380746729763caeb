"""The audit log's moving parts: the audit key, a writer's chain, checkpoints, verification.

* The audit key is a random secret sealed under the master key's custody (a file key or a
  PKCS#11 token) and stored like the token signing key; it never leaves the broker.
* Each process appends through a :class:`ChainAppender`: it leases a chain of its own,
  extends it one batch at a time (the row lock it takes is on that chain's head only, so
  no lock is shared by replicas), and refuses to extend a head whose MAC is wrong.
* Every ``checkpoint_interval`` seconds under load, when it goes idle (5 s without rows)
  and when it closes, a writer that appended rows stores a signed checkpoint over all
  chain heads; ``broker audit checkpoint`` exports one for safekeeping.
* :func:`verify_database` checks every chain, every head MAC, the stored checkpoints and
  any checkpoint files the operator kept.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from layerseal.broker import audit
from layerseal.broker.custody import KeyCustody, record_aad
from layerseal.broker.groupcommit import AuditCommitter
from layerseal.broker.store import Store
from layerseal.errors import BadInputError, NotFoundError
from layerseal.fileio import read_bytes

log = logging.getLogger("layerseal.broker.audit")

AUDIT_KEY_SECRET = "audit-key"  # noqa: S105 -- the name of a sealed secret row
DEFAULT_LEASE = 60.0
DEFAULT_CHECKPOINT_INTERVAL = 60.0


def _aad() -> bytes:
    return record_aad("secret", AUDIT_KEY_SECRET)


def audit_keys(store: Store, custody: KeyCustody, *, create: bool = True) -> audit.AuditKeys | None:
    """The deployment's audit keys (created on first use when *create*); None if absent."""
    if create:
        sealed: bytes | None = store.get_or_create_secret(
            AUDIT_KEY_SECRET, lambda: custody.seal(secrets.token_bytes(32), _aad())
        )
    else:
        sealed = store.get_secret(AUDIT_KEY_SECRET)
    if sealed is None:
        return None
    return audit.AuditKeys(custody.unseal(sealed, _aad()))


class ChainAppender:
    """One process's writer: ``append_batch`` for :class:`AuditCommitter` (one thread calls it)."""

    def __init__(
        self,
        store: Store,
        keys: audit.AuditKeys,
        *,
        lease: float = DEFAULT_LEASE,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.keys = keys
        self.lease = lease
        self.checkpoint_interval = checkpoint_interval
        self.owner = secrets.token_hex(16)
        self.chain: int | None = None
        self._clock = clock
        self._last_checkpoint = clock()
        self._dirty = False
        self._lock = threading.Lock()

    def append_batch(self, entries: Sequence[Mapping[str, Any]]) -> list[int]:
        with self._lock:
            for _ in range(5):
                if self.chain is None:
                    self.chain = self.store.claim_audit_chain(self.owner, self.keys, self.lease)
                result = self.store.append_audit_batch(
                    entries, chain=self.chain, owner=self.owner, keys=self.keys, lease=self.lease
                )
                if isinstance(result, list):
                    self._dirty = True
                    if self._clock() - self._last_checkpoint >= self.checkpoint_interval:
                        self._checkpoint_quietly()
                    return result
                if result == "tampered":
                    log.error(
                        "audit chain %s: its head does not carry a valid MAC (moved or rewritten "
                        "outside the broker); leaving it for 'broker audit verify' and writing "
                        "to another chain",
                        self.chain,
                    )
                self.chain = None
            raise BadInputError("audit log: expected a chain to append to, seen none after 5 claims")

    def _checkpoint_quietly(self) -> None:
        self._last_checkpoint = self._clock()
        try:
            write_checkpoint(self.store, self.keys)
            self._dirty = False
        except Exception:
            log.exception("audit checkpoint failed (retried after the next interval)")

    def idle(self) -> None:
        """The writer went idle: cover the rows since the last checkpoint now."""
        with self._lock:
            if self._dirty:
                self._checkpoint_quietly()

    def close(self) -> None:
        """A last checkpoint if anything was written, then end the lease."""
        with self._lock:
            if self._dirty:
                self._checkpoint_quietly()
            if self.chain is not None:
                self.store.release_audit_chain(self.chain, self.owner)
                self.chain = None


def open_audit_committer(
    store: Store, custody: KeyCustody, *, checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
) -> AuditCommitter:
    """The group committer a broker process appends its audit rows through."""
    first = store.get_secret(AUDIT_KEY_SECRET) is None
    keys = audit_keys(store, custody)
    assert keys is not None
    if first:
        # heads written before there was an audit key (an upgraded database) are trusted
        # once, now; later a head without a MAC is a reset head, never adopted
        store.adopt_audit_heads(keys)
    appender = ChainAppender(store, keys, checkpoint_interval=checkpoint_interval)
    return AuditCommitter(appender.append_batch, on_close=appender.close, on_idle=appender.idle)


def write_checkpoint(store: Store, keys: audit.AuditKeys, *, attempts: int = 5) -> str:
    """Sign and store a checkpoint over every chain head; returns its JSON text.

    Heads whose MAC does not verify are left out (a checkpoint must not vouch for them).
    """
    for _ in range(attempts):
        last = store.last_checkpoint()
        number = 1 if last is None else last[0] + 1
        prev = audit.GENESIS if last is None else audit.checkpoint_hash(last[1])
        heads = []
        for head in store.audit_heads():
            if keys.head_ok(head):
                heads.append(head)
            else:
                log.error("audit chain %s: head MAC invalid, left out of checkpoint %s", head.chain, number)
        doc = audit.make_checkpoint(keys, heads, number=number, prev=prev, at_ms=int(time.time() * 1000))
        body = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        if store.insert_checkpoint(number, doc["payload"]["at_ms"], body):
            return body
    raise BadInputError(f"audit checkpoint: expected a free checkpoint number, seen {attempts} taken")


def verify_database(
    store: Store, custody: KeyCustody, checkpoint_files: Iterable[Path] = ()
) -> audit.ChainReport:
    """Verify every chain, head MAC and stored checkpoint, and each checkpoint file given."""
    problems: list[str] = []
    keys = audit_keys(store, custody, create=False)
    heads = store.audit_heads()
    if keys is None:
        if any(h.seq for h in heads):
            return audit.ChainReport(
                False, 0, "", ("audit key: expected one in the database, seen none (secrets removed?)",)
            )
        return audit.ChainReport(True, 0, audit.merkle_root([]), (), chains=len(heads))
    pinned: list[tuple[str, audit.Checkpoint]] = []
    expected_number, expected_prev = 1, audit.GENESIS
    for number, body in store.iter_checkpoints():
        name = f"stored checkpoint {number}"
        try:
            cp = audit.parse_checkpoint(body, keys, name)
        except BadInputError as exc:
            problems.append(str(exc))
            continue
        if cp.number != number:
            problems.append(f"{name}: expected number {number} inside, seen {cp.number}")
        if number != expected_number:
            problems.append(
                f"{name}: expected checkpoint {expected_number} next, seen {number} (checkpoints removed)"
            )
        elif cp.prev != expected_prev:
            problems.append(f"{name}: expected prev {expected_prev[:16]}..., seen {cp.prev[:16]}...")
        expected_number, expected_prev = number + 1, audit.checkpoint_hash(body)
        pinned.append((name, cp))
    for path in checkpoint_files:
        name = f"checkpoint file {path}"
        text = read_bytes(path, name, error=NotFoundError).decode()
        try:
            pinned.append((name, audit.parse_checkpoint(text, keys, name)))
        except BadInputError as exc:
            problems.append(str(exc))
    verifier = audit.LogVerifier(keys, heads, pinned)
    for row in store.iter_audit_chains():
        verifier.row(row)
    report = verifier.finish()
    if not problems:
        return report
    return audit.ChainReport(
        False,
        report.rows,
        report.head_hash,
        tuple(problems) + report.problems,
        chains=report.chains,
        checkpoints=report.checkpoints,
    )


def export_checkpoint(store: Store, custody: KeyCustody, out: Path, *, fresh: bool = True) -> dict[str, Any]:
    """Write a checkpoint to *out* (0600, atomically): a new one, or the newest stored."""
    if fresh:
        keys = audit_keys(store, custody, create=False)
        if keys is None:
            raise NotFoundError("audit key: expected one in the database, seen none (no broker has run)")
        body = write_checkpoint(store, keys)
    else:
        last = store.last_checkpoint()
        if last is None:
            raise NotFoundError("audit checkpoint: expected a stored checkpoint, seen none")
        body = last[1]
    doc: dict[str, Any] = json.loads(body)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return doc
