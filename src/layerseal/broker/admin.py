"""The admin lifecycle beyond creation: token expiry and last use, single-object views,
audit search, and the validation hooks ``Broker`` runs when policies and reference values change.

Kept apart from ``service`` so the service only calls in at a few points; everything here
takes the broker and the authenticated principal and raises layerseal errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from layerseal.broker import refcheck
from layerseal.broker.policy import Policy
from layerseal.errors import BadInputError, NotFoundError

if TYPE_CHECKING:
    from layerseal.broker.service import Broker, Principal
    from layerseal.broker.store import Store

LAST_USE_RESOLUTION = 60.0  # seconds: last use is recorded at most this often per token
AUDIT_OUTCOMES = ("ok", "deny")


# ------------------------------------------------------------------ token expiry and last use


def check_token_use(store: Store, token_id: str, now: float) -> None:
    """Note an authenticated token's use (at most once a minute, one short write).

    Its expiry was checked with the token row (``api_tokens.expires_at``).
    """
    store.note_token_use(token_id, now, LAST_USE_RESOLUTION)


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def token_views(broker: Broker, principal: Principal) -> list[dict[str, Any]]:
    """Every API token with status, expiry and last use (admin)."""
    tokens = broker.list_api_tokens(principal)
    last_uses = broker.store.token_last_uses()
    now = broker.clock()
    for tok in tokens:
        expires_at = tok.get("expires_at")
        tok["expires_at"] = expires_at
        tok["expired"] = expires_at is not None and expires_at <= now
        tok["last_used_at"] = last_uses.get(tok["token_id"])
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

    The filters run in SQL over rows in id order; at most ``limit`` matching entries come
    back, and the last one's ``id`` is the ``after`` of the next page.
    """
    outcome = params.get("outcome") or params.get("decision")
    if outcome is not None and outcome not in AUDIT_OUTCOMES:
        raise BadInputError(
            f"audit filter 'outcome': expected one of {list(AUDIT_OUTCOMES)}, seen {outcome[:20]!r}"
        )
    since, until = _time_param(params.get("since"), "since"), _time_param(params.get("until"), "until")
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
    chosen = principal.reading(params.get("tenant"), "audit:read")
    rows = broker.store.iter_audit(
        tenant=chosen,
        after=after,
        limit=max(1, min(limit, 10000)),
        decision=outcome,
        action=params.get("action"),
        since_ms=since,
        until_ms=until,
        key_ids=key_ids,
    )
    return [dict(r.content, chain=r.chain, id=r.id, prev_hash=r.prev_hash, row_hash=r.row_hash) for r in rows]


def _int(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or len(value) > 12:
        raise BadInputError(f"query parameter {name!r}: expected a non-negative integer, seen {value[:20]!r}")
    return int(value)
