"""The broker's storage: one repository class over SQLAlchemy Core.

Everything a request needs lives here (sessions, nonces, revoked tokens, keys, policies,
audit chain), so any replica can serve any request.  Each method is one transaction.
Races between replicas are settled by the database: nonces are consumed with a guarded
UPDATE, a chain is appended under a row lock on its own head record (a batch of rows per
transaction, see ``groupcommit``), the bootstrap admin token is claimed by a primary key.
The release path reads keys, versions, token revocation and the tenant's policy
generation in one statement; policies and reference values are kept per replica and
re-read only when that generation moves.

Audit rows go to one chain per writing process (see ``audit``): each writer holds a lease
on its chain and locks only that chain's head row, so replicas never wait on each other.

``Store`` is assembled from one class per group of tables, each in its own module:
``credentials`` (API tokens, bootstrap, sealed secrets), ``keys``, ``rules`` (policies,
reference values, platforms), ``sessions`` (sessions, revoked tokens, attested claims),
``release`` (the release path's read) and ``auditing`` (chains, rows, checkpoints).
"""

from __future__ import annotations

from layerseal.broker.store.auditing import AuditStore, keys_json
from layerseal.broker.store.base import AuditStats
from layerseal.broker.store.credentials import ApiTokenRow, CredentialStore
from layerseal.broker.store.keys import KeyRow, KeyStore, KeyVersionRow
from layerseal.broker.store.release import ReleaseReads, ReleaseSnapshot
from layerseal.broker.store.rules import PlatformRow, PolicyRow, RuleStore, TenantRules
from layerseal.broker.store.sessions import SessionRow, SessionStore

__all__ = [
    "ApiTokenRow",
    "AuditStats",
    "KeyRow",
    "KeyVersionRow",
    "PlatformRow",
    "PolicyRow",
    "ReleaseSnapshot",
    "SessionRow",
    "Store",
    "TenantRules",
    "keys_json",
]


class Store(CredentialStore, KeyStore, RuleStore, SessionStore, ReleaseReads, AuditStore):
    """All database access of the broker."""
