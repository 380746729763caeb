"""``layerseal broker`` admin lifecycle commands: list/get/delete of tokens, policies,
reference values and platforms, and ``audit list``.  Registered by ``cli.broker``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from layerseal.errors import BadInputError, NotFoundError

ClientFactory = Callable[[argparse.Namespace], Any]
_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` -> seconds."""
    m = _DURATION.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise BadInputError(
            f"--expires-in: expected a duration like 3600, 12h, 30d or 2w, seen {text[:20]!r}"
        )
    return float(int(m.group(1)) * _UNITS[m.group(2)])


def iso(epoch: Any) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> str:
    """Columns aligned under a header; *empty* when there are no rows."""
    if not rows:
        return empty
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _out(args: argparse.Namespace, data: Any, text: str) -> int:
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


# ------------------------------------------------------------------ tokens


def _token_rows(tokens: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (
            t["token_id"],
            t["tenant"],
            t.get("status", "revoked" if t.get("revoked") else "active"),
            ",".join(t["scopes"]),
            iso(t.get("created_at")),
            iso(t.get("expires_at")) if t.get("expires_at") else "never",
            iso(t.get("last_used_at")) if t.get("last_used_at") else "never",
            t.get("description", ""),
        )
        for t in tokens
    ]
    headers = ("token id", "tenant", "status", "scopes", "created", "expires", "last used", "description")
    return table(headers, rows, "no tokens")


def token_list(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            tokens = c.list_tokens()
        if args.tenant:
            tokens = [t for t in tokens if t["tenant"] == args.tenant]
        return _out(args, tokens, _token_rows(tokens))

    return run


def token_get(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            tok = c.get_token(args.token_id)
        return _out(args, tok, _token_rows([tok]))

    return run


def token_revoke(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            c.delete_token(args.token_id)
        return _out(args, {"revoked": args.token_id}, f"token {args.token_id} revoked")

    return run


# ------------------------------------------------------------------ policies


def _policy_matches(p: Mapping[str, Any], args: argparse.Namespace) -> bool:
    return (
        (args.tenant is None or p["tenant"] == args.tenant)
        and p["scope"] == args.scope
        and (p["target"] or None) == (args.target or None)
    )


def policy_list(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            policies = c.list_policies(tenant=args.tenant)
        rows = [
            (
                p["tenant"],
                p["scope"],
                p["target"] or "-",
                len(p["policy"].get("anyOf", [])),
                iso(p.get("updated_at")),
            )
            for p in policies
        ]
        text = table(
            ("tenant", "scope", "target", "groups", "updated"), rows, "no policies (the default applies)"
        )
        return _out(args, policies, text)

    return run


def policy_get(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            policies = c.list_policies(tenant=args.tenant)
        found = [p for p in policies if _policy_matches(p, args)]
        if not found:
            where = f"{args.tenant or 'own tenant'} {args.scope} {args.target or ''}".rstrip()
            raise NotFoundError(f"policy {where}: expected to exist, seen none (the default policy applies)")
        if len(found) > 1:
            raise BadInputError(
                f"policy {args.scope}: expected one, seen {len(found)} tenants (add --tenant)"
            )
        print(json.dumps(found[0] if args.json else found[0]["policy"], indent=2))
        return 0

    return run


def policy_delete(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            c.delete_policy(scope=args.scope, target=args.target, tenant=args.tenant)
        what = f"{args.scope} {args.target or ''}".rstrip()
        return _out(args, {"deleted": what}, f"policy {what} deleted")

    return run


# ------------------------------------------------------------------ reference values


def refvalues_list(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            refs = c.list_refvalues(tenant=args.tenant)
        rows = [(t, n, len(v)) for t, sets in sorted(refs.items()) for n, v in sorted(sets.items())]
        return _out(args, refs, table(("tenant", "set", "values"), rows, "no reference values"))

    return run


def _one_set(refs: Mapping[str, Mapping[str, list[str]]], name: str, tenant: str | None) -> list[str]:
    sets = [v for t, s in refs.items() if tenant is None or t == tenant for n, v in s.items() if n == name]
    if not sets:
        raise NotFoundError(f"reference values {name!r}: expected an existing set, seen none")
    if len(sets) > 1:
        raise BadInputError(
            f"reference values {name!r}: expected one tenant's set, seen {len(sets)} (add --tenant)"
        )
    return sets[0]


def refvalues_get(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            values = _one_set(c.list_refvalues(tenant=args.tenant), args.name, args.tenant)
        return _out(args, values, "\n".join(values))

    return run


def refvalues_remove(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            values = args.values
            if args.all:
                if values:
                    raise BadInputError("refvalues remove --all: expected no values beside it, seen some")
                values = _one_set(c.list_refvalues(tenant=args.tenant), args.name, args.tenant)
            elif not values:
                raise BadInputError("refvalues remove: expected VALUE... or --all, seen neither")
            n = c.remove_refvalues(args.name, values, tenant=args.tenant)
        return _out(args, {"removed": n}, f"{n} reference value(s) removed from {args.name}")

    return run


# ------------------------------------------------------------------ platforms


def _platform_rows(platforms: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (p["fingerprint"], p["tee"], iso(p.get("created_at")), p.get("description", "")) for p in platforms
    ]
    return table(("fingerprint", "tee", "registered", "description"), rows, "no platforms")


def platform_list(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            platforms = c.list_platforms()
        return _out(args, platforms, _platform_rows(platforms))

    return run


def platform_get(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            found = [p for p in c.list_platforms() if p["fingerprint"] == args.fingerprint]
        if not found:
            raise NotFoundError(f"platform {args.fingerprint[:80]!r}: expected to be registered, seen none")
        return _out(args, found[0], _platform_rows(found))

    return run


def platform_delete(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            c.delete_platform(args.fingerprint)
        return _out(args, {"deleted": args.fingerprint}, f"platform {args.fingerprint} no longer trusted")

    return run


# ------------------------------------------------------------------ audit


def audit_list(client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        filters = {
            "tenant": args.tenant,
            "key": args.key,
            "repository": args.repository,
            "outcome": args.outcome,
            "action": args.action,
            "since": args.since,
            "until": args.until,
            "after": args.after,
            "limit": args.limit,
        }
        with client(args) as c:
            entries = c.search_audit({k: v for k, v in filters.items() if v is not None})
        rows = [
            (
                e["id"],
                iso(int(e["at_ms"]) / 1000),
                e.get("tenant") or "-",
                e["action"],
                e["decision"],
                e.get("actor", ""),
                " ".join(json.loads(e["keys"]) if isinstance(e.get("keys"), str) else e.get("keys") or [])
                or "-",
                (e.get("reason") or "")[:80],
            )
            for e in entries
        ]
        headers = ("id", "time", "tenant", "action", "outcome", "actor", "keys", "reason")
        return _out(args, entries, table(headers, rows, "no matching audit entries"))

    return run


def register_admin(
    groups: Mapping[str, Any], client: ClientFactory, with_http: Callable[[Any], None]
) -> None:
    """Add the lifecycle actions to the ``broker`` groups (token, policy, refvalues, platform, audit)."""
    tok = groups["token"]
    p = tok.add_parser("list", help="API tokens: status, scopes, expiry, last use (admin)")
    p.add_argument("--tenant")
    with_http(p)
    p.set_defaults(func=token_list(client))
    p = tok.add_parser("get", help="one API token (admin)")
    p.add_argument("token_id")
    with_http(p)
    p.set_defaults(func=token_get(client))
    for name in ("revoke", "delete"):
        p = tok.add_parser(name, help="revoke an API token; it stays listed as revoked (admin)")
        p.add_argument("token_id")
        with_http(p)
        p.set_defaults(func=token_revoke(client))

    pol = groups["policy"]
    p = pol.add_parser("list", help="stored release policies")
    p.add_argument("--tenant")
    with_http(p)
    p.set_defaults(func=policy_list(client))
    for name, factory, help_text in (
        ("get", policy_get, "print one policy document"),
        ("delete", policy_delete, "delete a policy (the next broader one, or the default, applies)"),
    ):
        p = pol.add_parser(name, help=help_text)
        p.add_argument("--scope", default="tenant", choices=["tenant", "repository", "key"])
        p.add_argument("--target")
        p.add_argument("--tenant")
        with_http(p)
        p.set_defaults(func=factory(client))

    ref = groups["refvalues"]
    p = ref.add_parser("list", help="reference-value sets and their sizes")
    p.add_argument("--tenant")
    with_http(p)
    p.set_defaults(func=refvalues_list(client))
    p = ref.add_parser("get", help="the values of one set")
    p.add_argument("name")
    p.add_argument("--tenant")
    with_http(p)
    p.set_defaults(func=refvalues_get(client))
    p = ref.add_parser("remove", help="remove values from a set (--all: the whole set)")
    p.add_argument("name")
    p.add_argument("values", nargs="*")
    p.add_argument("--all", action="store_true")
    p.add_argument("--tenant")
    with_http(p)
    p.set_defaults(func=refvalues_remove(client))

    plat = groups["platform"]
    p = plat.add_parser("list", help="trusted sim platforms (admin)")
    with_http(p)
    p.set_defaults(func=platform_list(client))
    p = plat.add_parser("get", help="one trusted platform (admin)")
    p.add_argument("fingerprint")
    with_http(p)
    p.set_defaults(func=platform_get(client))
    p = plat.add_parser("delete", help="stop trusting a platform (admin)")
    p.add_argument("fingerprint")
    with_http(p)
    p.set_defaults(func=platform_delete(client))

    aud = groups["audit"]
    p = aud.add_parser("list", help="browse the audit log over HTTP (filters combine; --json for scripts)")
    p.add_argument("--tenant")
    p.add_argument("--key", help="key id (kXXXX...)")
    p.add_argument("--repository", help="entries naming keys of this repository")
    p.add_argument("--outcome", choices=["ok", "deny"])
    p.add_argument("--action", help="release, attest, key-create, policy-set, token-create, ...")
    p.add_argument("--since", help="ISO-8601 UTC (2026-11-30T05:00:00Z) or epoch seconds")
    p.add_argument("--until", help="ISO-8601 UTC or epoch seconds (exclusive)")
    p.add_argument("--after", help="entry id to continue after (paging)")
    p.add_argument("--limit", default="100", help="at most this many entries (default 100)")
    with_http(p)
    p.set_defaults(func=audit_list(client))
