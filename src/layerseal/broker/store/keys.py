"""Layer keys and their KEK versions: the rows, their columns, and the key lifecycle writes
(create, add a version, change a version's status, flag, delete) and reads."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Insert, delete, func, insert, select, update

from layerseal.broker import schema as S
from layerseal.broker.store.base import StoreBase


@dataclass(frozen=True)
class KeyVersionRow:
    version: int
    status: str
    created_at: float
    changed_at: float
    sealed_kek: bytes


@dataclass(frozen=True)
class KeyRow:
    key_id: str
    tenant: str
    repository: str
    layer_digest: str
    created_at: float
    unused_at: float | None
    revoked_at: float | None
    versions: tuple[KeyVersionRow, ...]


# A key's columns in KeyRow's field order; a version's key id, then KeyVersionRow's fields
# but the sealed KEK, which is read only where a caller needs it.
KEY_COLUMNS = tuple(S.layer_keys.c[f.name] for f in fields(KeyRow) if f.name != "versions")
_VERSION_FIELDS = [f.name for f in fields(KeyVersionRow) if f.name != "sealed_kek"]
VERSION_COLUMNS = (S.key_versions.c.key_id, *(S.key_versions.c[name] for name in _VERSION_FIELDS))


def assemble(keys: Iterable[Sequence[Any]], versions: Iterable[Sequence[Any]]) -> dict[str, KeyRow]:
    """KeyRows from key rows in ``KEY_COLUMNS`` order and version rows in ``VERSION_COLUMNS``
    order, each optionally followed by its sealed KEK (else the row carries ``b""``)."""
    found: dict[str, list[KeyVersionRow]] = {}
    for v in versions:
        sealed = bytes(v[5]) if len(v) > 5 else b""
        found.setdefault(v[0], []).append(KeyVersionRow(v[1], v[2], v[3], v[4], sealed))
    out = {}
    for k in keys:
        ordered = tuple(sorted(found.get(k[0], ()), key=lambda x: x.version))
        out[k[0]] = KeyRow(k[0], k[1], k[2], k[3], k[4], k[5], k[6], ordered)
    return out


def _new_version(key_id: str, version: int, sealed_kek: bytes, now: float) -> Insert:
    row = {"key_id": key_id, "version": version, "sealed_kek": sealed_kek, "status": "active"}
    return insert(S.key_versions).values(**row, created_at=now, changed_at=now)


class KeyStore(StoreBase):
    """The ``layer_keys`` and ``key_versions`` tables."""

    def insert_key(
        self, key_id: str, tenant: str, repository: str, layer_digest: str, sealed_kek: bytes
    ) -> None:
        now = self.clock()
        key = {"key_id": key_id, "tenant": tenant, "repository": repository, "layer_digest": layer_digest}
        with self.engine.begin() as conn:
            conn.execute(insert(S.layer_keys).values(**key, created_at=now, unused_at=None, revoked_at=None))
            conn.execute(_new_version(key_id, 1, sealed_kek, now))

    def next_version(self, key_id: str) -> int:
        with self.engine.begin() as conn:
            n = conn.execute(
                select(func.max(S.key_versions.c.version)).where(S.key_versions.c.key_id == key_id)
            ).scalar()
        return int(n or 0) + 1

    def insert_version(self, key_id: str, version: int, sealed_kek: bytes) -> bool:
        """Add a version; False if another writer took that version number first."""
        return self._insert_new(_new_version(key_id, version, sealed_kek, self.clock()))

    def set_version_status(self, key_id: str, version: int | None, status: str) -> int:
        q = update(S.key_versions).where(S.key_versions.c.key_id == key_id)
        if version is not None:
            q = q.where(S.key_versions.c.version == version)
        if status != "revoked":
            q = q.where(S.key_versions.c.status != "revoked")  # revocation is final
        with self.engine.begin() as conn:
            res = conn.execute(q.values(status=status, changed_at=self.clock()))
        return int(res.rowcount)

    def set_key_flags(self, key_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(S.layer_keys).where(S.layer_keys.c.key_id == key_id).values(**values))

    def delete_key(self, key_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(S.key_versions).where(S.key_versions.c.key_id == key_id))
            conn.execute(delete(S.layer_keys).where(S.layer_keys.c.key_id == key_id))

    def get_keys(self, key_ids: Sequence[str], *, with_secrets: bool = False) -> dict[str, KeyRow]:
        if not key_ids:
            return {}
        wanted = set(key_ids)
        columns = [*VERSION_COLUMNS, S.key_versions.c.sealed_kek] if with_secrets else VERSION_COLUMNS
        with self.engine.begin() as conn:
            krows = conn.execute(select(*KEY_COLUMNS).where(S.layer_keys.c.key_id.in_(wanted))).all()
            vrows = conn.execute(select(*columns).where(S.key_versions.c.key_id.in_(wanted))).all()
        return assemble(krows, vrows)

    def list_keys(self, tenant: str | None, repository: str | None) -> list[KeyRow]:
        """At most 10000 keys (of *tenant*, in *repository*), oldest first, without KEKs."""
        q = select(*KEY_COLUMNS).order_by(S.layer_keys.c.created_at)
        if tenant is not None:
            q = q.where(S.layer_keys.c.tenant == tenant)
        if repository is not None:
            q = q.where(S.layer_keys.c.repository == repository)
        with self.engine.begin() as conn:
            krows = conn.execute(q.limit(10000)).all()
            ids = [r.key_id for r in krows]
            vrows: list[Any] = []
            for i in range(0, len(ids), 500):
                batch = select(*VERSION_COLUMNS).where(S.key_versions.c.key_id.in_(ids[i : i + 500]))
                vrows.extend(conn.execute(batch).all())
        keys = assemble(krows, vrows)
        return [keys[i] for i in ids]
