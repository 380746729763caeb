"""The admin lifecycle beyond creation: token expiry and last use, single-object views,
audit search, and the validation hooks ``Broker`` runs when policies and reference values change.

Kept apart from ``service`` so the service only calls in at a few points; everything here
takes the broker and the authenticated principal and raises layerseal errors.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from layerseal.broker import refcheck
from layerseal.broker import schema as S
from layerseal.broker.database import READONLY_OPTION
from layerseal.broker.policy import Policy
from layerseal.errors import BadInputError, NotFoundError
from layerseal.kbs.problems import UnauthenticatedError

if TYPE_CHECKING:
    from layerseal.broker.service import Broker, Principal
    from layerseal.broker.store import Store

LAST_USE_RESOLUTION = 60.0  # seconds: last use is recorded at most this often per token
AUDIT_OUTCOMES = ("ok", "deny")


# ------------------------------------------------------------------ token expiry and last use


def _meta(store: Store) -> dict[str, tuple[float | None, float | None]]:
    t = S.api_token_meta
    with store.engine.begin() as conn:
        rows = conn.execute(select(t.c.token_id, t.c.expires_at, t.c.last_used_at)).all()
    return {str(r.token_id): (r.expires_at, r.last_used_at) for r in rows}


def check_token_use(store: Store, token_id: str, now: float) -> None:
    """Refuse an expired token; note its use (at most once a minute, one short write)."""
    t = S.api_token_meta
    # the read takes no write lock (SQLite writers start with BEGIN IMMEDIATE)
    with store.engine.connect() as conn:
        conn = conn.execution_options(**{READONLY_OPTION: True})
        with conn.begin():
            row = conn.execute(
                select(t.c.expires_at, t.c.last_used_at).where(t.c.token_id == token_id)
            ).first()
    if row is not None and row.expires_at is not None and row.expires_at <= now:
        raise UnauthenticatedError(
            f"API token {token_id}: expected unexpired, seen expired at {iso(row.expires_at)}"
        )
    if row is not None and row.last_used_at is not None and now - row.last_used_at < LAST_USE_RESOLUTION:
        return
    with store.engine.begin() as conn:
        done = conn.execute(update(t).where(t.c.token_id == token_id).values(last_used_at=now))
        if done.rowcount == 0:
            try:
                with conn.begin_nested():
                    conn.execute(insert(t).values(token_id=token_id, expires_at=None, last_used_at=now))
            except IntegrityError:
                pass  # another request of the same token inserted it first: its time will do


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def token_views(broker: Broker, principal: Principal) -> list[dict[str, Any]]:
    """Every API token with status, expiry and last use (admin)."""
    tokens = broker.list_api_tokens(principal)
    meta = _meta(broker.store)
    now = broker.clock()
    for tok in tokens:
        # the expiry lives with the token (api_tokens.expires_at); meta holds its last use
        meta_expiry, last_used_at = meta.get(tok["token_id"], (None, None))
        expires_at = tok.get("expires_at") if tok.get("expires_at") is not None else meta_expiry
        tok["expires_at"] = expires_at
        tok["expired"] = expires_at is not None and expires_at <= now
        tok["last_used_at"] = last_used_at
        tok["status"] = (
            "revoked"
            if tok["revoked"]
            else "expired"
            if expires_at is not None and expires_at <= now
            else "active"
        )
    return tokens


def token_view(broker: Broker, principal: Principal, token_id: str) -> dict[str, Any]:
    for tok in token_views(broker, principal):
        if tok["token_id"] == token_id:
            return tok
    raise NotFoundError(f"API token {token_id[:40]!r}: expected an issued token, seen none")


# ------------------------------------------------------------------ validation hooks


def check_policy_for(store: Store, tenant: str, parsed: Policy) -> None:
    """Called by ``Broker.set_policy`` before storing: see :func:`refcheck.check_policy`."""
    refvalues = store.list_refvalues(tenant).get(tenant, {})
    refcheck.check_policy(parsed, refvalues)


def check_refvalues_for(store: Store, tenant: str, name: str, values: list[str]) -> None:
    """Called by ``Broker.change_refvalues`` before adding values to a set."""
    policies = [Policy.parse(r.document) for r in store.list_policies(tenant)]
    existing = store.list_refvalues(tenant).get(tenant, {}).get(name, [])
    refcheck.check_refvalues(name, [*existing, *values], refcheck.digest_sets(policies))


# ------------------------------------------------------------------ audit search


def _time_param(value: str | None, name: str) -> int | None:
    """Epoch milliseconds from ISO-8601 (``2026-11-30T05:00:00Z``) or epoch seconds."""
    if value is None or value == "":
        return None
    try:
        return int(float(value) * 1000)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadInputError(
            f"audit filter {name!r}: expected ISO-8601 UTC time or epoch seconds, seen {value[:40]!r}"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def search_audit(broker: Broker, principal: Principal, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """Audit entries after ``after``, filtered by tenant, key, repository, outcome, action and time.

    Rows are scanned in id order in pages; at most ``limit`` matching entries come back, and
    the last one's ``id`` is the ``after`` of the next page.
    """
    outcome = params.get("outcome") or params.get("decision")
    if outcome is not None and outcome not in AUDIT_OUTCOMES:
        raise BadInputError(
            f"audit filter 'outcome': expected one of {list(AUDIT_OUTCOMES)}, seen {outcome[:20]!r}"
        )
    since, until = _time_param(params.get("since"), "since"), _time_param(params.get("until"), "until")
    action = params.get("action")
    key = params.get("key")
    limit = _int(params.get("limit"), "limit", 1000)
    after = _int(params.get("after"), "after", 0)
    key_ids: set[str] | None = None
    if key is not None:
        key_ids = {key}
    repository = params.get("repository")
    if repository is not None:
        ids = {k.key_id for k in broker.list_keys(principal, params.get("tenant"), repository)}
        key_ids = ids if key_ids is None else key_ids & ids
    out: list[dict[str, Any]] = []
    limit = max(1, min(limit, 10000))
    while len(out) < limit:
        page = broker.audit_entries(principal, params.get("tenant"), after, 1000)
        if not page:
            break
        after = int(page[-1]["id"])
        for entry in page:
            if _matches(entry, outcome, action, since, until, key_ids):
                out.append(entry)
                if len(out) == limit:
                    break
    return out


def _int(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or len(value) > 12:
        raise BadInputError(f"query parameter {name!r}: expected a non-negative integer, seen {value[:20]!r}")
    return int(value)


def _key_ids(entry: Mapping[str, Any]) -> set[str]:
    raw = entry.get("keys") or "[]"
    paths = json.loads(raw) if isinstance(raw, str) else raw
    # "tenant/kID.version" or "tenant/kID"
    return {str(p).split("/", 1)[-1].split(".", 1)[0] for p in paths}


def _matches(
    entry: Mapping[str, Any],
    outcome: str | None,
    action: str | None,
    since: int | None,
    until: int | None,
    key_ids: set[str] | None,
) -> bool:
    if outcome is not None and entry.get("decision") != outcome:
        return False
    if action is not None and entry.get("action") != action:
        return False
    at = int(entry.get("at_ms") or 0)
    if since is not None and at < since:
        return False
    if until is not None and at >= until:
        return False
    return key_ids is None or bool(_key_ids(entry) & key_ids)
