"""Layer keys (KEKs) and their versions: create, list, rotate, retire, revoke, delete.

KEKs are sealed by the key custody before they reach the store; each change is audited.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from layerseal.broker.custody import record_aad
from layerseal.broker.requests import CreateKeyRequest, RotateKeyRequest, check_optsdata, check_repository
from layerseal.broker.service.common import Part, Principal
from layerseal.broker.store import KeyRow
from layerseal.errors import BadInputError, NotFoundError
from layerseal.kbs import packets
from layerseal.kbs.problems import ForbiddenError, UnavailableError

VERSION_STATUSES = ("retired", "revoked", "active")


@dataclass(frozen=True)
class KeyVersionInfo:
    """One version of a layer key: its number, status and when it was made."""

    version: int
    status: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "status": self.status, "created_at": self.created_at}


@dataclass(frozen=True)
class KeyInfo:
    """What the publisher API shows of a layer key (never its KEK)."""

    key_id: str
    tenant: str
    repository: str
    layer_digest: str
    created_at: float
    unused: bool
    revoked: bool
    versions: tuple[KeyVersionInfo, ...] = field(default=())

    @classmethod
    def of(cls, row: KeyRow) -> KeyInfo:
        return cls(
            row.key_id,
            row.tenant,
            row.repository,
            row.layer_digest,
            row.created_at,
            row.unused_at is not None,
            row.revoked_at is not None,
            tuple(KeyVersionInfo(v.version, v.status, v.created_at) for v in row.versions),
        )

    @property
    def current_version(self) -> int | None:
        active = [v.version for v in self.versions if v.status == "active"]
        return max(active) if active else None

    def to_json(self) -> dict[str, Any]:
        current = self.current_version
        return {
            "key_id": self.key_id,
            "tenant": self.tenant,
            "repository": self.repository,
            "layer_digest": self.layer_digest,
            "created_at": self.created_at,
            "unused": self.unused,
            "revoked": self.revoked,
            "current_version": current,
            "kid": None if current is None else packets.ResourcePath(self.tenant, self.key_id, current).kid,
            "versions": [v.to_json() for v in self.versions],
        }


class LayerKeys(Part):
    """The key lifecycle of the publisher API."""

    def _load(self, principal: Principal, key_id: str, scope: str, *, secrets_too: bool = False) -> KeyRow:
        if not isinstance(key_id, str) or not packets.KEY_ID_RE.match(key_id):
            raise BadInputError(f"key id: expected 'k' + 26 base32 chars, seen {str(key_id)[:40]!r}")
        row = self.store.get_keys([key_id], with_secrets=secrets_too).get(key_id)
        # another tenant's key is reported as unknown: its existence is not ours to reveal
        if row is None or (not principal.is_admin and row.tenant != principal.tenant):
            raise NotFoundError(f"key {key_id}: expected a key of tenant {principal.tenant!r}, seen none")
        principal.require(scope, row.tenant)
        return row

    def _info(self, key_id: str) -> KeyInfo:
        return KeyInfo.of(self.store.get_keys([key_id])[key_id])

    def _seal_kek(self, key_id: str, version: int, kek: bytes) -> bytes:
        return self.custody.seal(kek, record_aad("kek", key_id, version))

    def _audit(self, action: str, principal: Principal, row: KeyRow, key: str, reason: str) -> None:
        """One audit row for a change to *key* (``<key_id>`` or ``<key_id>.<version>``) of *row*'s tenant."""
        self.audit.record(
            action,
            "ok",
            tenant=row.tenant,
            keys=[f"{row.tenant}/{key}"],
            actor=principal.actor,
            reason=reason,
        )

    def create(self, principal: Principal, body: Mapping[str, Any]) -> tuple[KeyInfo, bytes]:
        """Create the KEK of a new image portion; returns its info and the CoCo key packet."""
        tenant = principal.tenant_for(body.get("tenant"))
        principal.require("keys:write", tenant)
        request = CreateKeyRequest.from_json(body)
        key_id = packets.new_key_id()
        kek = secrets.token_bytes(32)
        packet = packets.make_key_packet(packets.ResourcePath(tenant, key_id, 1).kid, kek, request.optsdata)
        self.store.insert_key(
            key_id, tenant, request.repository, request.layer_digest, self._seal_kek(key_id, 1, kek)
        )
        row = self.store.get_keys([key_id])[key_id]
        self._audit(
            "key-create", principal, row, f"{key_id}.1", f"{request.repository} {request.layer_digest}"
        )
        return KeyInfo.of(row), packet

    def list(self, principal: Principal, tenant: Any = None, repository: Any = None) -> list[KeyInfo]:
        chosen = principal.reading(tenant, "keys:read")
        repo = None if repository is None else check_repository(repository)
        return [KeyInfo.of(r) for r in self.store.list_keys(chosen, repo)]

    def get(self, principal: Principal, key_id: str) -> KeyInfo:
        return KeyInfo.of(self._load(principal, key_id, "keys:read"))

    def _rotated_optsdata(self, row: KeyRow, request: RotateKeyRequest) -> bytes:
        """The optsdata of the new version: as sent, or unwrapped from the old version's packet."""
        if request.packet is None:
            assert request.optsdata is not None
            return request.optsdata
        key_id, path = row.key_id, request.packet.resource
        if path.key_id != key_id or path.version is None:
            raise BadInputError(
                f"{request.WHAT}: packet kid: expected a version of key {key_id}, "
                f"seen {request.packet.kid[:100]!r}"
            )
        old = {v.version: v for v in row.versions}.get(path.version)
        if old is None:
            raise NotFoundError(f"key {key_id} version {path.version}: expected to exist, seen none")
        kek_old = self.custody.unseal(old.sealed_kek, record_aad("kek", key_id, old.version))
        return check_optsdata(packets.unwrap_key_packet(request.packet_json, kek_old), request.WHAT)

    def rotate(self, principal: Principal, key_id: str, body: Mapping[str, Any]) -> tuple[KeyInfo, bytes]:
        """New KEK version; the optsdata comes in the clear or as the old packet to re-wrap."""
        row = self._load(principal, key_id, "keys:write", secrets_too=True)
        if row.revoked_at is not None:
            raise ForbiddenError(f"key {key_id}: expected an unrevoked key to rotate, seen revoked")
        request = RotateKeyRequest.from_json(body)
        optsdata = self._rotated_optsdata(row, request)
        kek = secrets.token_bytes(32)
        for _ in range(5):
            version = self.store.next_version(key_id)
            if self.store.insert_version(key_id, version, self._seal_kek(key_id, version, kek)):
                break
        else:
            raise UnavailableError(
                f"key {key_id}: expected to add a version, seen repeated concurrent rotations"
            )
        if request.retire_previous:
            for v in row.versions:
                if v.status == "active":
                    self.store.set_version_status(key_id, v.version, "retired")
        new_packet = packets.make_key_packet(
            packets.ResourcePath(row.tenant, key_id, version).kid, kek, optsdata
        )
        self._audit("key-rotate", principal, row, f"{key_id}.{version}", "rotated")
        return self._info(key_id), new_packet

    def set_version_status(self, principal: Principal, key_id: str, version: int, status: str) -> KeyInfo:
        if status not in VERSION_STATUSES:
            raise BadInputError(f"key version status: expected retired/revoked/active, seen {status[:20]!r}")
        row = self._load(principal, key_id, "keys:write")
        if version not in {v.version for v in row.versions}:
            raise NotFoundError(f"key {key_id} version {version}: expected to exist, seen none")
        if self.store.set_version_status(key_id, version, status) == 0:
            raise ForbiddenError(
                f"key {key_id} version {version}: expected a changeable status, seen revoked"
            )
        self._audit(f"key-{status}", principal, row, f"{key_id}.{version}", status)
        return self._info(key_id)

    def revoke(self, principal: Principal, key_id: str) -> KeyInfo:
        row = self._load(principal, key_id, "keys:write")
        self.store.set_version_status(key_id, None, "revoked")
        self.store.set_key_flags(key_id, revoked_at=self.clock())
        self._audit("key-revoke", principal, row, key_id, "revoked")
        return self._info(key_id)

    def mark_unused(self, principal: Principal, key_id: str, unused: bool) -> KeyInfo:
        row = self._load(principal, key_id, "keys:write")
        self.store.set_key_flags(key_id, unused_at=self.clock() if unused else None)
        self._audit("key-unused" if unused else "key-used", principal, row, key_id, "marked")
        return self._info(key_id)

    def delete(self, principal: Principal, key_id: str) -> None:
        """Destroy a key marked unused or revoked (clean-up); anything else is refused."""
        row = self._load(principal, key_id, "keys:write")
        if row.unused_at is None and row.revoked_at is None:
            raise ForbiddenError(
                f"key {key_id}: expected to be marked unused or revoked before deletion, seen in use"
            )
        self.store.delete_key(key_id)
        self._audit("key-delete", principal, row, key_id, "deleted")
