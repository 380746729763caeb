"""``layerseal broker``: run the key broker, verify its audit chain, administer it over HTTP."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from layerseal.errors import BadInputError

TOKEN_ENV = "LAYERSEAL_BROKER_TOKEN"  # noqa: S105 -- an env variable name


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInputError(f"--listen: expected HOST:PORT, seen {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _serve(args: argparse.Namespace) -> int:
    from layerseal.broker.server import ServeOptions, serve
    from layerseal.broker.service import BrokerConfig

    host, port = _listen(args.listen)
    serve(
        ServeOptions(
            db_url=args.db,
            host=host,
            port=port,
            tls_cert=Path(args.tls_cert) if args.tls_cert else None,
            tls_key=Path(args.tls_key) if args.tls_key else None,
            master_key_file=Path(args.master_key_file) if args.master_key_file else None,
            master_key_uri=args.master_key,
            snp_vcek_cache=Path(args.snp_vcek_cache) if args.snp_vcek_cache else None,
            snp_crl=Path(args.snp_crl) if args.snp_crl else None,
            tdx_collateral=Path(args.tdx_collateral) if args.tdx_collateral else None,
            admin_token_file=Path(args.admin_token_file) if args.admin_token_file else None,
            log_level=args.log_level,
            auth_rate=args.auth_rate,
            auth_burst=args.auth_burst,
            relaxed_audit_sync=args.audit_sync == "normal",
            workers=args.workers,
            trusted_proxies=tuple(args.trusted_proxy or ()),
            config=BrokerConfig(
                token_ttl=args.token_ttl, session_ttl=args.session_ttl, allow_sample_tee=args.allow_sample_tee
            ),
        )
    )
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from layerseal.broker.server import audit_verify

    report = audit_verify(args.db)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "rows": report.rows,
                    "head": report.head_hash,
                    "problems": list(report.problems),
                }
            )
        )
    else:
        print(
            f"audit chain: {'intact' if report.ok else 'BROKEN'}, {report.rows} rows, head {report.head_hash}"
        )
        for problem in report.problems:
            print(f"  {problem}")
    return 0 if report.ok else 3


def _client(args: argparse.Namespace) -> Any:
    from layerseal.broker.client import PublisherClient

    token = args.token or os.environ.get(TOKEN_ENV)
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    if not token:
        raise BadInputError(f"broker token: expected --token-file, --token or ${TOKEN_ENV}, seen none")
    return PublisherClient(args.url, token, verify=args.ca or True)


def _print(args: argparse.Namespace, data: Any, text: str) -> int:
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_expires(text: str, now: float) -> float:
    """``--expires``: a duration (``90m``, ``12h``, ``30d``) or a UTC date/time (ISO 8601)."""
    if len(text) > 1 and text[-1] in _UNITS and text[:-1].isdigit():
        return now + int(text[:-1]) * _UNITS[text[-1]]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInputError(
            f"--expires: expected a duration like 30d, 12h, 90m or a date like 2027-01-31, seen {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _when(epoch: float | None) -> str:
    return "never" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _token_create(args: argparse.Namespace) -> int:
    expires = None if args.expires is None else parse_expires(args.expires, time.time())
    with _client(args) as c:
        token_id, token = c.create_token(
            args.tenant, args.scope, description=args.description, expires_at=expires
        )
    text = f"token {token_id} (shown once, expires {_when(expires)}): {token}"
    return _print(args, {"token_id": token_id, "token": token, "expires_at": expires}, text)


def _token_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        tokens = c.list_tokens()
    lines = [f"{'TOKEN':<18} {'TENANT':<16} {'STATUS':<8} {'EXPIRES':<21} SCOPES"]
    for t in tokens:
        status = "revoked" if t["revoked"] else "expired" if t.get("expired") else "active"
        lines.append(
            f"{t['token_id']:<18} {t['tenant']:<16} {status:<8} {_when(t.get('expires_at')):<21} "
            + " ".join(t["scopes"])
        )
    return _print(args, tokens, "\n".join(lines))


def _policy_set(args: argparse.Namespace) -> int:
    doc = json.loads(Path(args.file).read_text()) if args.file != "-" else json.load(sys.stdin)
    with _client(args) as c:
        result = c.set_policy(doc, scope=args.scope, target=args.target, tenant=args.tenant)
    return _print(
        args, result, f"policy set for {result['tenant']} {result['scope']} {result['target']}".rstrip()
    )


def _refvalues_add(args: argparse.Namespace) -> int:
    with _client(args) as c:
        n = c.add_refvalues(args.name, args.values, tenant=args.tenant)
    return _print(args, {"added": n}, f"{n} reference value(s) added to {args.name}")


def _platform_register(args: argparse.Namespace) -> int:
    with _client(args) as c:
        fingerprint = c.register_platform(Path(args.certificate).read_bytes(), description=args.description)
    return _print(args, {"fingerprint": fingerprint}, f"platform registered: {fingerprint}")


def _keys_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        keys = c.list_keys(args.repository, tenant=args.tenant)
    text = "\n".join(f"{k['kid']}  {k['repository']}  {k['layer_digest']}" for k in keys) or "no keys"
    return _print(args, keys, text)


def _with_http(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("LAYERSEAL_BROKER_URL", "http://127.0.0.1:8080"))
    p.add_argument("--token-file", help="file holding an API token")
    p.add_argument("--token", help=argparse.SUPPRESS)
    p.add_argument("--ca", help="CA bundle to verify the broker's TLS certificate")
    p.add_argument("--json", action="store_true", help="print JSON")


def _group(sub: Any, name: str, help_text: str) -> Any:
    """A ``broker NAME ACTION`` command group; its subparsers."""
    group = sub.add_parser(name, help=help_text)
    actions = group.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    actions.required = True
    return actions


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("broker", help="the key broker (security service)")
    sub = parser.add_subparsers(dest="broker_command", metavar="ACTION")
    sub.required = True

    serve = sub.add_parser("serve", help="run the broker")
    serve.add_argument("--db", default="layerseal-broker.db", help="SQLite path/URL or postgresql://...")
    serve.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT")
    serve.add_argument("--tls-cert")
    serve.add_argument("--tls-key")
    serve.add_argument(
        "--master-key-file", help="master key (0600, created if missing); or $LAYERSEAL_MASTER_KEY"
    )
    serve.add_argument(
        "--master-key",
        help="master key in a PKCS#11 token: 'pkcs11:token=T;object=K?pin-source=file:/p' "
        "(RFC 7512; overrides --master-key-file; the key is created in the token if missing)",
    )
    serve.add_argument("--snp-vcek-cache", help="directory of VCEK certificates (offline fallback)")
    serve.add_argument(
        "--snp-crl",
        help="directory of AMD CRLs (KDS /vcek/v1/<gen>/crl): revoked ASKs/ASVKs are refused; "
        "a CRL past its nextUpdate refuses all evidence of its generation",
    )
    serve.add_argument("--tdx-collateral", help="directory of Intel TDX TCB info collateral")
    serve.add_argument("--admin-token-file", help="admin token file (created 0600 if missing)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the listen socket (state is in the database; "
        "the --auth-rate limit applies per worker)",
    )
    serve.add_argument("--auth-rate", type=float, default=20.0, help="RCAR requests/s per client")
    serve.add_argument("--auth-burst", type=float, default=100.0)
    serve.add_argument("--token-ttl", type=float, default=300.0, help="attestation token lifetime, seconds")
    serve.add_argument("--session-ttl", type=float, default=300.0, help="RCAR session lifetime, seconds")
    serve.add_argument(
        "--audit-sync",
        choices=["full", "normal"],
        default="full",
        help="SQLite: fsync every audit row (full) or survive only process crashes (normal); keys: full",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="ADDRESS",
        help="repeatable: a reverse proxy address (or CIDR) whose X-Forwarded-For names the client; "
        "from any other peer the header is ignored",
    )
    serve.add_argument(
        "--allow-sample-tee",
        action="store_true",
        help="DEVELOPMENT ONLY: accept unsigned 'sample' TEE evidence (logged loudly at start)",
    )
    serve.set_defaults(func=_serve)

    audit_sub = _group(sub, "audit", "audit log tools")
    verify = audit_sub.add_parser("verify", help="check the hash chain; exit 3 if broken")
    verify.add_argument("--db", required=True)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_audit_verify)

    token_sub = _group(sub, "token", "API tokens")
    create = token_sub.add_parser("create", help="create a publisher token (admin)")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--scope", action="append", required=True, help="repeatable: keys:write, keys:read, ..."
    )
    create.add_argument("--description", default="")
    create.add_argument(
        "--expires", help="the token stops working after a duration (30d, 12h, 90m) or at a UTC date/time"
    )
    _with_http(create)
    create.set_defaults(func=_token_create)
    tlist = token_sub.add_parser("list", help="list API tokens with status and expiry (admin)")
    _with_http(tlist)
    tlist.set_defaults(func=_token_list)

    policy_sub = _group(sub, "policy", "release policies")
    pset = policy_sub.add_parser("set", help="set a release policy from a JSON file ('-' = stdin)")
    pset.add_argument("file")
    pset.add_argument("--scope", default="tenant", choices=["tenant", "repository", "key"])
    pset.add_argument("--target")
    pset.add_argument("--tenant")
    _with_http(pset)
    pset.set_defaults(func=_policy_set)

    refv_sub = _group(sub, "refvalues", "reference values")
    radd = refv_sub.add_parser("add", help="add reference values")
    radd.add_argument("name")
    radd.add_argument("values", nargs="+")
    radd.add_argument("--tenant")
    _with_http(radd)
    radd.set_defaults(func=_refvalues_add)

    plat_sub = _group(sub, "platform", "trusted sim platforms")
    preg = plat_sub.add_parser("register", help="trust a sim platform certificate (admin)")
    preg.add_argument("certificate", help="platform-cert.pem")
    preg.add_argument("--description", default="")
    _with_http(preg)
    preg.set_defaults(func=_platform_register)

    keys_sub = _group(sub, "keys", "layer keys")
    klist = keys_sub.add_parser("list", help="list keys")
    klist.add_argument("--repository")
    klist.add_argument("--tenant")
    _with_http(klist)
    klist.set_defaults(func=_keys_list)
