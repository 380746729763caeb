"""``layerseal broker`` admin commands that are one request to the broker: list/get/delete of
tokens, policies, reference values and platforms, adding reference values and platforms,
``keys list`` and ``audit list``.  Registered by ``cli.broker``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from layerseal.cli.common import read_key_file
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


# an action's reply: what --json prints, and the text printed otherwise
Reply = tuple[Any, str]
Action = Callable[[Any, argparse.Namespace], Reply]


def command(action: Action, client: ClientFactory) -> Callable[[argparse.Namespace], int]:
    """The command that runs *action* with a client of the broker and prints its reply."""

    def run(args: argparse.Namespace) -> int:
        with client(args) as c:
            data, text = action(c, args)
        print(json.dumps(data, indent=2) if args.json else text)
        return 0

    return run


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


def token_list(c: Any, args: argparse.Namespace) -> Reply:
    tokens = c.list_tokens()
    if args.tenant:
        tokens = [t for t in tokens if t["tenant"] == args.tenant]
    return tokens, _token_rows(tokens)


def token_get(c: Any, args: argparse.Namespace) -> Reply:
    tok = c.get_token(args.token_id)
    return tok, _token_rows([tok])


def token_revoke(c: Any, args: argparse.Namespace) -> Reply:
    c.delete_token(args.token_id)
    return {"revoked": args.token_id}, f"token {args.token_id} revoked"


# ------------------------------------------------------------------ policies


def _policy_matches(p: Mapping[str, Any], args: argparse.Namespace) -> bool:
    return (
        (args.tenant is None or p["tenant"] == args.tenant)
        and p["scope"] == args.scope
        and (p["target"] or None) == (args.target or None)
    )


def policy_list(c: Any, args: argparse.Namespace) -> Reply:
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
    headers = ("tenant", "scope", "target", "groups", "updated")
    return policies, table(headers, rows, "no policies (the default applies)")


def policy_get(c: Any, args: argparse.Namespace) -> Reply:
    """The stored record with --json, else the policy document alone (JSON either way)."""
    found = [p for p in c.list_policies(tenant=args.tenant) if _policy_matches(p, args)]
    if not found:
        where = f"{args.tenant or 'own tenant'} {args.scope} {args.target or ''}".rstrip()
        raise NotFoundError(f"policy {where}: expected to exist, seen none (the default policy applies)")
    if len(found) > 1:
        raise BadInputError(f"policy {args.scope}: expected one, seen {len(found)} tenants (add --tenant)")
    return found[0], json.dumps(found[0]["policy"], indent=2)


def policy_delete(c: Any, args: argparse.Namespace) -> Reply:
    c.delete_policy(scope=args.scope, target=args.target, tenant=args.tenant)
    what = f"{args.scope} {args.target or ''}".rstrip()
    return {"deleted": what}, f"policy {what} deleted"


# ------------------------------------------------------------------ reference values


def refvalues_add(c: Any, args: argparse.Namespace) -> Reply:
    n = c.add_refvalues(args.name, args.values, tenant=args.tenant)
    return {"added": n}, f"{n} reference value(s) added to {args.name}"


def refvalues_list(c: Any, args: argparse.Namespace) -> Reply:
    refs = c.list_refvalues(tenant=args.tenant)
    rows = [(t, n, len(v)) for t, sets in sorted(refs.items()) for n, v in sorted(sets.items())]
    return refs, table(("tenant", "set", "values"), rows, "no reference values")


def _one_set(refs: Mapping[str, Mapping[str, list[str]]], name: str, tenant: str | None) -> list[str]:
    sets = [v for t, s in refs.items() if tenant is None or t == tenant for n, v in s.items() if n == name]
    if not sets:
        raise NotFoundError(f"reference values {name!r}: expected an existing set, seen none")
    if len(sets) > 1:
        raise BadInputError(
            f"reference values {name!r}: expected one tenant's set, seen {len(sets)} (add --tenant)"
        )
    return sets[0]


def refvalues_get(c: Any, args: argparse.Namespace) -> Reply:
    values = _one_set(c.list_refvalues(tenant=args.tenant), args.name, args.tenant)
    return values, "\n".join(values)


def refvalues_remove(c: Any, args: argparse.Namespace) -> Reply:
    values = args.values
    if args.all:
        if values:
            raise BadInputError("refvalues remove --all: expected no values beside it, seen some")
        values = _one_set(c.list_refvalues(tenant=args.tenant), args.name, args.tenant)
    elif not values:
        raise BadInputError("refvalues remove: expected VALUE... or --all, seen neither")
    n = c.remove_refvalues(args.name, values, tenant=args.tenant)
    return {"removed": n}, f"{n} reference value(s) removed from {args.name}"


# ------------------------------------------------------------------ platforms


def _platform_rows(platforms: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (p["fingerprint"], p["tee"], iso(p.get("created_at")), p.get("description", "")) for p in platforms
    ]
    return table(("fingerprint", "tee", "registered", "description"), rows, "no platforms")


def platform_register(c: Any, args: argparse.Namespace) -> Reply:
    certificate = read_key_file(args.certificate, "platform certificate")
    fingerprint = c.register_platform(certificate, description=args.description)
    return {"fingerprint": fingerprint}, f"platform registered: {fingerprint}"


def platform_list(c: Any, args: argparse.Namespace) -> Reply:
    platforms = c.list_platforms()
    return platforms, _platform_rows(platforms)


def platform_get(c: Any, args: argparse.Namespace) -> Reply:
    found = [p for p in c.list_platforms() if p["fingerprint"] == args.fingerprint]
    if not found:
        raise NotFoundError(f"platform {args.fingerprint[:80]!r}: expected to be registered, seen none")
    return found[0], _platform_rows(found)


def platform_delete(c: Any, args: argparse.Namespace) -> Reply:
    c.delete_platform(args.fingerprint)
    return {"deleted": args.fingerprint}, f"platform {args.fingerprint} no longer trusted"


# ------------------------------------------------------------------ keys


def keys_list(c: Any, args: argparse.Namespace) -> Reply:
    keys = c.list_keys(args.repository, tenant=args.tenant)
    return keys, "\n".join(f"{k['kid']}  {k['repository']}  {k['layer_digest']}" for k in keys) or "no keys"


# ------------------------------------------------------------------ audit

_AUDIT_FILTERS = ("tenant", "key", "repository", "outcome", "action", "since", "until", "after", "limit")


def audit_list(c: Any, args: argparse.Namespace) -> Reply:
    filters = {name: getattr(args, name) for name in _AUDIT_FILTERS}
    entries = c.search_audit({k: v for k, v in filters.items() if v is not None})
    rows = [
        (
            e["id"],
            iso(int(e["at_ms"]) / 1000),
            e.get("tenant") or "-",
            e["action"],
            e["decision"],
            e.get("actor", ""),
            " ".join(json.loads(e["keys"]) if isinstance(e.get("keys"), str) else e.get("keys") or []) or "-",
            (e.get("reason") or "")[:80],
        )
        for e in entries
    ]
    headers = ("id", "time", "tenant", "action", "outcome", "actor", "keys", "reason")
    return entries, table(headers, rows, "no matching audit entries")


# an action's own arguments: (name or flag, add_argument keywords)
Arguments = tuple[tuple[str, dict[str, Any]], ...]
_TENANT: Arguments = (("--tenant", {}),)
_POLICY: Arguments = (
    ("--scope", {"default": "tenant", "choices": ["tenant", "repository", "key"]}),
    ("--target", {}),
    *_TENANT,
)
_AUDIT: Arguments = (
    *_TENANT,
    ("--key", {"help": "key id (kXXXX...)"}),
    ("--repository", {"help": "entries naming keys of this repository"}),
    ("--outcome", {"choices": ["ok", "deny"]}),
    ("--action", {"help": "release, attest, key-create, policy-set, token-create, ..."}),
    ("--since", {"help": "ISO-8601 UTC (2026-11-30T05:00:00Z) or epoch seconds"}),
    ("--until", {"help": "ISO-8601 UTC or epoch seconds (exclusive)"}),
    ("--after", {"help": "entry id to continue after (paging)"}),
    ("--limit", {"default": "100", "help": "at most this many entries (default 100)"}),
)
_REVOKE_HELP = "revoke an API token; it stays listed as revoked (admin)"
# (group, action, help, what it runs, its own arguments), in the order --help lists them;
# every action also takes the broker's HTTP flags
ACTIONS: tuple[tuple[str, str, str, Action, Arguments], ...] = (
    ("token", "list", "API tokens: status, scopes, expiry, last use (admin)", token_list, _TENANT),
    ("token", "get", "one API token (admin)", token_get, (("token_id", {}),)),
    ("token", "revoke", _REVOKE_HELP, token_revoke, (("token_id", {}),)),
    ("token", "delete", _REVOKE_HELP, token_revoke, (("token_id", {}),)),
    ("policy", "list", "stored release policies", policy_list, _TENANT),
    ("policy", "get", "print one policy document", policy_get, _POLICY),
    (
        "policy",
        "delete",
        "delete a policy (the next broader one, or the default, applies)",
        policy_delete,
        _POLICY,
    ),
    (
        "refvalues",
        "add",
        "add reference values",
        refvalues_add,
        (("name", {}), ("values", {"nargs": "+"}), *_TENANT),
    ),
    ("refvalues", "list", "reference-value sets and their sizes", refvalues_list, _TENANT),
    ("refvalues", "get", "the values of one set", refvalues_get, (("name", {}), *_TENANT)),
    (
        "refvalues",
        "remove",
        "remove values from a set (--all: the whole set)",
        refvalues_remove,
        (("name", {}), ("values", {"nargs": "*"}), ("--all", {"action": "store_true"}), *_TENANT),
    ),
    (
        "platform",
        "register",
        "trust a sim platform certificate (admin)",
        platform_register,
        (("certificate", {"help": "platform-cert.pem"}), ("--description", {"default": ""})),
    ),
    ("platform", "list", "trusted sim platforms (admin)", platform_list, ()),
    ("platform", "get", "one trusted platform (admin)", platform_get, (("fingerprint", {}),)),
    ("platform", "delete", "stop trusting a platform (admin)", platform_delete, (("fingerprint", {}),)),
    ("keys", "list", "list keys", keys_list, (("--repository", {}), *_TENANT)),
    (
        "audit",
        "list",
        "browse the audit log over HTTP (filters combine; --json for scripts)",
        audit_list,
        _AUDIT,
    ),
)


def register_admin(
    groups: Mapping[str, Any], client: ClientFactory, with_http: Callable[[Any], None]
) -> None:
    """Add :data:`ACTIONS` to the ``broker`` groups (token, policy, refvalues, platform, keys, audit)."""
    for group, name, help_text, action, arguments in ACTIONS:
        p = groups[group].add_parser(name, help=help_text)
        for argument, options in arguments:
            p.add_argument(argument, **options)
        with_http(p)
        p.set_defaults(func=command(action, client))
