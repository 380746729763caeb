"""What each console page shows, as plain JSON-able values: the HTML pages and the
``/api/v1/console/*`` endpoints both call these, so a page and its JSON never disagree.

Every function takes the authenticated ``Principal`` and applies the broker's own rules:
an admin sees every tenant (or the one it names), a tenant token sees only its tenant and
needs the scope the matching API call needs (``audit:read``, ``keys:read``,
``policy:read``/``policy:write``).  Rows that belong to no tenant (attestations, platform
and token changes) are shown to admins only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from layerseal.broker import policy
from layerseal.broker.console import queries
from layerseal.broker.metrics import Metrics
from layerseal.broker.service import Broker, Principal, check_repository
from layerseal.errors import BadInputError, NotFoundError
from layerseal.kbs import packets
from layerseal.kbs.problems import ForbiddenError

DEFAULT_PAGE = 100
OUTCOMES = {"ok": "ok", "release": "ok", "released": "ok", "deny": "deny", "denied": "deny"}
_FAILED = re.compile(r"(anyOf\[\d+\]): condition '(.*)' failed \((.*)\)$", re.S)
_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_NICE_BUCKETS_S = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 6 * 3600, 86400, 7 * 86400)


def iso(ms: int | float | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(float(ms) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _time_ms(value: str, name: str) -> int:
    """Epoch seconds or ISO 8601 (a date, or a date and time; UTC unless an offset is given)."""
    text = value.strip()
    if re.fullmatch(r"\d{1,12}(\.\d+)?", text):
        return int(float(text) * 1000)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadInputError(
            f"{name}: expected ISO 8601 time (2026-11-30T05:00) or epoch seconds, seen {text[:40]!r}"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _int(value: str | None, name: str, default: int | None) -> int | None:
    if value is None or value == "":
        return default
    if not value.isdigit() or len(value) > 12:
        raise BadInputError(f"{name}: expected a non-negative integer, seen {value[:20]!r}")
    return int(value)


def _scope(who: Principal, tenant: str | None) -> str | None:
    """The tenant a view is limited to: None (all) only for an admin naming none."""
    if not tenant:
        return None if who.is_admin else who.tenant
    if not _TENANT_RE.match(tenant):
        raise BadInputError(f"tenant: expected a tenant name, seen {tenant[:40]!r}")
    return who.tenant_for(tenant)


def _key_id(value: str) -> str:
    """A key id from an id, a kid (``kbs:///tenant/key/version``) or an audit path (``tenant/key.1``)."""
    text = value.strip().removeprefix("kbs:///")
    for part in reversed(re.split(r"[/.]", text)):
        if packets.KEY_ID_RE.match(part):
            return part
    raise BadInputError(f"key: expected a key id ('k' + 26 base32 characters) or kid, seen {value[:60]!r}")


# ---------------------------------------------------------------- audit timeline


def failing_conditions(reason: str) -> list[dict[str, str]]:
    """The policy conditions a denial names, one per anyOf group: condition and observed value."""
    _, sep, tail = reason.partition("denied release: ")
    if not sep:
        return []
    out = []
    for part in re.split(r"; (?=anyOf\[)", tail):
        m = _FAILED.match(part.strip())
        if m:
            out.append({"group": m.group(1), "condition": m.group(2), "observed": m.group(3)})
    return out


def entry_json(record: queries.AuditRecord) -> dict[str, Any]:
    c = record.content
    try:
        keys = json.loads(c["keys"]) if isinstance(c["keys"], str) else list(c["keys"] or [])
    except ValueError:
        keys = []
    reason = str(c.get("reason") or "")
    failing = failing_conditions(reason) if c.get("decision") == "deny" else []
    return {
        "id": record.position,
        "seq": c["seq"],
        "at_ms": c["at_ms"],
        "at": iso(c["at_ms"]),
        "actor": c["actor"],
        "action": c["action"],
        "decision": c["decision"],
        "tenant": c["tenant"],
        "keys": keys,
        "evidence_digest": c["evidence_digest"],
        "measurement": c["measurement"],
        "reason": reason,
        "failing_conditions": failing,
        "failing": "; ".join(f"{f['condition']} ({f['observed']})" for f in failing)
        if failing
        else (reason if c.get("decision") == "deny" else ""),
        "platform": _platform_of(record.claims),
        "claims": record.claims,
        "prev_hash": record.prev_hash,
        "row_hash": record.row_hash,
    }


def _platform_of(claims: Mapping[str, Any] | None) -> str | None:
    if not claims:
        return None
    tee = str(claims.get("tee", ""))
    detail = claims.get(tee)
    if isinstance(detail, Mapping) and isinstance(detail.get("platform"), str):
        return str(detail["platform"])
    return tee or None


@dataclass(frozen=True)
class TimelineQuery:
    tenant: str | None = None
    repository: str | None = None
    key: str | None = None
    platform: str | None = None
    outcome: str | None = None
    action: str | None = None
    since: str | None = None
    until: str | None = None
    before: int | None = None
    limit: int = DEFAULT_PAGE

    @classmethod
    def from_params(cls, q: Mapping[str, str]) -> TimelineQuery:
        def get(name: str) -> str | None:
            value = q.get(name)
            return value.strip() or None if value is not None else None

        outcome = get("outcome")
        if outcome is not None and outcome not in OUTCOMES:
            raise BadInputError(f"outcome: expected release or deny, seen {outcome[:20]!r}")
        action = get("action")
        if action is not None and not re.fullmatch(r"[a-z-]{1,32}", action):
            raise BadInputError(f"action: expected an audit action like 'release', seen {action[:40]!r}")
        limit = _int(q.get("limit"), "limit", DEFAULT_PAGE) or DEFAULT_PAGE
        if limit > queries.MAX_PAGE:
            raise BadInputError(f"limit: expected at most {queries.MAX_PAGE}, seen {limit}")
        return cls(
            tenant=get("tenant"),
            repository=get("repository"),
            key=get("key"),
            platform=get("platform"),
            outcome=None if outcome is None else OUTCOMES[outcome],
            action=action,
            since=get("since"),
            until=get("until"),
            before=_int(q.get("before"), "before", None),
            limit=limit,
        )

    def params(self, **override: Any) -> dict[str, str]:
        """The query string of this view (for links to the next page)."""
        values = {
            "tenant": self.tenant,
            "repository": self.repository,
            "key": self.key,
            "platform": self.platform,
            "outcome": {"ok": "release", "deny": "deny"}.get(self.outcome or ""),
            "action": self.action,
            "since": self.since,
            "until": self.until,
            "limit": None if self.limit == DEFAULT_PAGE else str(self.limit),
        }
        values.update(override)
        return {k: str(v) for k, v in values.items() if v not in (None, "")}


def audit_timeline(broker: Broker, who: Principal, tq: TimelineQuery) -> dict[str, Any]:
    """A page of the audit timeline, newest first; ``next`` continues it."""
    tenant = _scope(who, tq.tenant)
    who.require("audit:read", tenant)
    key_ids: tuple[str, ...] | None = None
    if tq.repository is not None:
        repo = check_repository(tq.repository)
        key_ids = tuple(k.key_id for k in broker.store.list_keys(tenant, repo))
    if tq.key is not None:
        wanted = _key_id(tq.key)
        key_ids = (wanted,) if key_ids is None or wanted in key_ids else ()
    f = queries.AuditFilter(
        tenant=tenant,
        key_ids=key_ids,
        platform=tq.platform,
        outcome=tq.outcome,
        action=tq.action,
        since_ms=None if tq.since is None else _time_ms(tq.since, "since"),
        until_ms=None if tq.until is None else _time_ms(tq.until, "until"),
        before=tq.before,
    )
    records = queries.search_audit(broker.store.engine, f, tq.limit + 1)
    more = len(records) > tq.limit
    records = records[: tq.limit]
    return {
        "tenant": tenant,
        "filters": tq.params(),
        "entries": [entry_json(r) for r in records],
        "next": records[-1].position if more and records else None,
    }


def audit_entry(broker: Broker, who: Principal, position: int) -> dict[str, Any]:
    record = queries.get_audit(broker.store.engine, position)
    tenant = None if record is None else record.content.get("tenant")
    # another tenant's row, or a row of no tenant, is reported as unknown to a tenant token
    if record is None or (not who.is_admin and tenant != who.tenant):
        raise NotFoundError(f"audit entry {position}: expected an entry of tenant {who.tenant!r}, seen none")
    who.require("audit:read", tenant)
    return entry_json(record)


# ---------------------------------------------------------------- images and keys


def _key_status(k: Mapping[str, Any]) -> str:
    if k["revoked"]:
        return "revoked"
    if k["unused"]:
        return "unused"
    if k["current_version"] is None:
        return "retired"
    return "active"


def images(broker: Broker, who: Principal, tenant: str | None, repository: str | None) -> dict[str, Any]:
    """Keys per repository and layer: versions, status, releases, and keys nobody uses."""
    chosen = _scope(who, tenant)
    keys = broker.list_keys(who, chosen, repository or None)
    use = queries.key_use(broker.store.engine, chosen)
    repos: dict[tuple[str, str], list[dict[str, Any]]] = {}
    unused: list[dict[str, Any]] = []
    for info in keys:
        k = info.to_json()
        u = use.get(info.key_id)
        k.update(
            status=_key_status(k),
            created=iso(info.created_at * 1000),
            releases=0 if u is None else u.releases,
            denials=0 if u is None else u.denials,
            last_release=None if u is None or u.last_release_ms is None else iso(u.last_release_ms),
            versions=[dict(v, created=iso(v["created_at"] * 1000)) for v in k["versions"]],
        )
        repos.setdefault((info.tenant, info.repository), []).append(k)
        if k["unused"] or k["releases"] == 0:
            unused.append(
                {
                    "key_id": info.key_id,
                    "tenant": info.tenant,
                    "repository": info.repository,
                    "why": "marked unused" if k["unused"] else "never released",
                }
            )
    return {
        "tenant": chosen,
        "repositories": [
            {"tenant": t, "repository": r, "keys": ks, "layers": len({k["layer_digest"] for k in ks})}
            for (t, r), ks in sorted(repos.items())
        ],
        "unused": unused,
        "note": "tags live in the registry: the broker knows repositories and layer digests",
    }


# ---------------------------------------------------------------- platforms and reference values


def platforms(broker: Broker, who: Principal, tenant: str | None) -> dict[str, Any]:
    chosen = _scope(who, tenant)
    out: dict[str, Any] = {"tenant": chosen, "platforms": None, "refvalues": None, "hidden": []}
    if who.is_admin:
        use = {p.platform: p for p in queries.platform_use(broker.store.engine)}
        out["platforms"] = [
            dict(
                p,
                registered=iso(p["created_at"] * 1000),
                attestations=use[p["fingerprint"]].attestations if p["fingerprint"] in use else 0,
                last_attested=iso(use[p["fingerprint"]].last_ms) if p["fingerprint"] in use else None,
            )
            for p in broker.list_platforms(who)
        ]
        out["tees"] = [
            {"tee": p.tee, "attestations": p.attestations, "last_attested": iso(p.last_ms)}
            for p in use.values()
            if not p.platform
        ]
    else:
        out["hidden"].append("platforms (admin only: they are shared by every tenant)")
    try:
        out["refvalues"] = broker.list_refvalues(who, chosen)
    except ForbiddenError:
        out["hidden"].append("reference values (this token lacks policy:read)")
    return out


# ---------------------------------------------------------------- policies


def policies(broker: Broker, who: Principal, tenant: str | None) -> dict[str, Any]:
    chosen = _scope(who, tenant)
    rows = broker.list_policies(who, chosen)
    return {
        "tenant": chosen,
        "policies": [dict(p, updated=iso(p["updated_at"] * 1000)) for p in rows],
        "default_policy": policy.DEFAULT_POLICY_DOCUMENT,
    }


def _condition_result(cond: policy.Condition, claims: Mapping[str, Any], refs: Mapping[str, Any]) -> bool:
    # one condition on its own: a policy of a single group of it
    alone = policy.Policy(((cond,),), {}, "")
    return policy.evaluate(alone, claims, refs).allowed


def dry_run(broker: Broker, who: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate a policy (not stored) against recorded or given claims; says which condition decides.

    Body: ``tenant`` (admins), ``policy`` (document), and ``audit_entry`` (the id of a
    recorded release or denial) or ``claims`` (an object).  The tenant's current
    reference values are used.
    """
    tenant = who.tenant_for(body.get("tenant"))
    if "policy:read" not in who.scopes:
        who.require("policy:write", tenant)
    pol = policy.Policy.parse(body.get("policy"))
    entry_id, given = body.get("audit_entry"), body.get("claims")
    source: dict[str, Any]
    if (entry_id is None) == (given is None):
        raise BadInputError("policy dry-run: expected 'audit_entry' or 'claims', seen both or neither")
    if entry_id is not None:
        if isinstance(entry_id, bool) or not isinstance(entry_id, int) or entry_id < 1:
            raise BadInputError(
                f"policy dry-run: field 'audit_entry': expected an entry id, seen {entry_id!r}"
            )
        entry = audit_entry(broker, who, entry_id)
        if entry["tenant"] != tenant:
            raise BadInputError(
                f"policy dry-run: audit entry {entry_id}: expected an entry of tenant {tenant!r}, "
                f"seen {entry['tenant']!r}"
            )
        if entry["claims"] is None:
            raise NotFoundError(
                f"policy dry-run: audit entry {entry_id}: expected recorded claims, seen none "
                f"(a {entry['action']} entry without a verified attestation)"
            )
        claims = entry["claims"]
        source = {
            "audit_entry": entry_id,
            "at": entry["at"],
            "keys": entry["keys"],
            "recorded_decision": "release" if entry["decision"] == "ok" else "deny",
            "recorded_reason": entry["reason"],
        }
    else:
        if not isinstance(given, dict):
            raise BadInputError(
                f"policy dry-run: field 'claims': expected an object, seen {type(given).__name__}"
            )
        claims = given
        source = {"claims": "given"}
    refs = broker.store.list_refvalues(tenant).get(tenant, {})
    decision = policy.evaluate(pol, claims, refs)
    groups: list[dict[str, Any]] = []
    deciding: list[str] = []
    for i, group in enumerate(pol.groups):
        results = [
            {
                "condition": c.description,
                "holds": _condition_result(c, claims, refs),
                "observed": c.observed(claims),
                "refvalues": c.refvalues,
            }
            for c in group
        ]
        holds = all(r["holds"] for r in results)
        groups.append({"group": f"anyOf[{i}]", "holds": holds, "conditions": results})
    for g in groups:
        if decision.allowed and g["holds"]:
            deciding = [f"{g['group']} holds: every condition ({len(g['conditions'])}) holds"]
            break
        if not decision.allowed:
            first = next((c for c in g["conditions"] if not c["holds"]), None)
            if first is not None:
                deciding.append(f"{g['group']}: '{first['condition']}' fails ({first['observed']})")
    missing = sorted({r["refvalues"] for g in groups for r in g["conditions"] if r["refvalues"]} - set(refs))
    result = "release" if decision.allowed else "deny"
    return {
        "tenant": tenant,
        "policy_digest": pol.digest,
        "decision": result,
        "allowed": decision.allowed,
        "deciding": deciding,
        "reason": decision.reason,
        "groups": groups,
        "warnings": [f"reference values {name!r} do not exist for tenant {tenant!r}" for name in missing],
        "source": source,
        "changed": None if "recorded_decision" not in source else source["recorded_decision"] != result,
        "claims": claims,
    }


# ---------------------------------------------------------------- activity


def _bucket_seconds(span_s: float) -> int:
    for size in _NICE_BUCKETS_S:
        if span_s / size <= 48:
            return size
    return _NICE_BUCKETS_S[-1]


def activity(
    broker: Broker,
    who: Principal,
    tenant: str | None,
    since: str | None,
    until: str | None,
    metrics: Metrics | None,
) -> dict[str, Any]:
    """Releases and denials per time bucket, and (admins) the release latency histogram."""
    chosen = _scope(who, tenant)
    who.require("audit:read", chosen)
    now_ms = int(time.time() * 1000)
    since_ms = _time_ms(since, "since") if since else now_ms - 30 * 86400 * 1000
    until_ms = _time_ms(until, "until") if until else None
    times = queries.release_times(broker.store.engine, chosen, since_ms, until_ms)
    buckets: list[dict[str, Any]] = []
    bucket_s: int | None = None
    if times:
        first, last = times[0][0], times[-1][0]
        bucket_s = _bucket_seconds((last - first) / 1000)
        size = bucket_s * 1000
        start = first - first % size
        n = (last - start) // size + 1
        counts = [[0, 0] for _ in range(n)]
        for at, decision in times:
            counts[(at - start) // size][0 if decision == "ok" else 1] += 1
        buckets = [
            {"start": iso(start + i * size), "start_ms": start + i * size, "releases": c[0], "denials": c[1]}
            for i, c in enumerate(counts)
        ]
    latency = None
    if who.is_admin and metrics is not None:
        latency = {name: metrics.latency(name) for name in ("kbs_resources", "kbs_resource", "kbs_attest")}
    return {
        "tenant": chosen,
        "since": iso(since_ms),
        "until": iso(until_ms) if until_ms else None,
        "bucket_seconds": bucket_s,
        "buckets": buckets,
        "totals": {
            "releases": sum(b["releases"] for b in buckets),
            "denials": sum(b["denials"] for b in buckets),
        },
        "latency": latency,
    }
