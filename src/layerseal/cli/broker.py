"""``layerseal broker``: run the key broker, verify its audit chain, administer it over HTTP."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from layerseal.cli.common import read_key_file
from layerseal.errors import BadInputError, NotFoundError

TOKEN_ENV = "LAYERSEAL_BROKER_TOKEN"  # noqa: S105 -- an env variable name


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInputError(f"--listen: expected HOST:PORT, seen {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on before anything is created (the server
    itself would only fail after opening the database and writing the admin token)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            seen = "it in use by another process" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise BadInputError(
                f"--listen {host}:{port}: expected a free local address, seen {seen}"
            ) from exc


def _check_tls_files(cert: str | None, key: str | None) -> None:
    if bool(cert) != bool(key):
        raise BadInputError("--tls-cert/--tls-key: expected both or neither, seen one")
    if cert and key:
        read_key_file(cert, "--tls-cert")
        read_key_file(key, "--tls-key")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            what = f"--tls-cert {cert} / --tls-key {key}"
            raise BadInputError(f"{what}: expected a PEM certificate and its key, seen {exc.reason}") from exc


def _serve(args: argparse.Namespace) -> int:
    from layerseal.broker.server import ServeOptions, serve
    from layerseal.broker.service import BrokerConfig

    host, port = _listen(args.listen)
    _check_tls_files(args.tls_cert, args.tls_key)
    _check_port(host, port)
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
            sgx_collateral=Path(args.sgx_collateral) if args.sgx_collateral else None,
            admin_token_file=Path(args.admin_token_file) if args.admin_token_file else None,
            log_level=args.log_level,
            auth_rate=args.auth_rate,
            auth_burst=args.auth_burst,
            relaxed_audit_sync=args.audit_sync == "normal",
            workers=args.workers,
            db_pool_size=args.db_pool_size,
            console=args.console,
            config=BrokerConfig(token_ttl=args.token_ttl, session_ttl=args.session_ttl),
        )
    )
    return 0


def _existing_db(db: str) -> None:
    """A SQLite path (or ``sqlite:///`` URL) to verify must exist: opening it would create it."""
    if "://" in db and not db.startswith("sqlite:"):
        return
    path = db.split(":///", 1)[1] if db.startswith("sqlite:") else db
    if path in ("", ":memory:") or not Path(path).is_file():
        raise NotFoundError(f"--db {db}: expected an existing broker database, seen no such file")


def _audit_verify(args: argparse.Namespace) -> int:
    from layerseal.broker.server import audit_verify

    _existing_db(args.db)
    report = audit_verify(
        args.db,
        master_key_file=Path(args.master_key_file) if args.master_key_file else None,
        master_key_uri=args.master_key,
        checkpoints=[Path(p) for p in args.checkpoint or ()],
    )
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "rows": report.rows,
                    "chains": report.chains,
                    "checkpoints": report.checkpoints,
                    "head": report.head_hash,
                    "problems": list(report.problems),
                }
            )
        )
    else:
        print(
            f"audit log: {'intact' if report.ok else 'BROKEN'}, {report.rows} rows in {report.chains} "
            f"chain(s), {report.checkpoints} checkpoint(s) checked, root {report.head_hash}"
        )
        for problem in report.problems:
            print(f"  {problem}")
    return 0 if report.ok else 3


def _audit_checkpoint(args: argparse.Namespace) -> int:
    from layerseal.broker import database
    from layerseal.broker.auditlog import export_checkpoint
    from layerseal.broker.masterkey import open_custody
    from layerseal.broker.server import default_master_key_file
    from layerseal.broker.store import Store

    key_file = Path(args.master_key_file) if args.master_key_file else default_master_key_file(args.db)
    custody = open_custody(key_file, args.master_key)
    engine = database.create_db_engine(args.db)
    try:
        doc = export_checkpoint(Store(engine), custody, Path(args.out), fresh=not args.stored)
    finally:
        engine.dispose()
    payload = doc["payload"]
    print(
        f"audit checkpoint {payload['number']} ({len(payload['chains'])} chain(s), root {payload['root']}) "
        f"written to {args.out}; keep a copy outside the broker's database"
    )
    return 0


def _with_master_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="SQLite path/URL or postgresql://...")
    p.add_argument(
        "--master-key-file",
        help="master key file (default: beside a SQLite database); or $LAYERSEAL_MASTER_KEY",
    )
    p.add_argument("--master-key", help="master key in a PKCS#11 token (pkcs11: URI, as for serve)")


def _client(args: argparse.Namespace) -> Any:
    from layerseal.kbs.client import PublisherClient

    token = args.token or os.environ.get(TOKEN_ENV)
    if args.token_file:
        token = read_key_file(args.token_file, "--token-file").decode(errors="replace").strip()
    if not token:
        raise BadInputError(f"broker token: expected --token-file, --token or ${TOKEN_ENV}, seen none")
    if args.ca:
        read_key_file(args.ca, "--ca")
    try:
        return PublisherClient(args.url, token, verify=args.ca or True)
    except ssl.SSLError as exc:
        raise BadInputError(f"--ca {args.ca}: expected PEM CA certificates, seen {exc.reason}") from exc


def _print(args: argparse.Namespace, data: Any, text: str) -> int:
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _token_create(args: argparse.Namespace) -> int:
    with _client(args) as c:
        token_id, token = c.create_token(args.tenant, args.scope, description=args.description)
    return _print(args, {"token_id": token_id, "token": token}, f"token {token_id} (shown once): {token}")


def _policy_set(args: argparse.Namespace) -> int:
    raw = read_key_file(args.file, "policy file") if args.file != "-" else sys.stdin.buffer.read()
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise BadInputError(f"policy file {args.file}: expected JSON, seen invalid data ({exc})") from exc
    if not isinstance(doc, dict):
        raise BadInputError(f"policy file {args.file}: expected a JSON object, seen {type(doc).__name__}")
    with _client(args) as c:
        result = c.set_policy(doc, scope=args.scope, target=args.target, tenant=args.tenant)
    return _print(
        args, result, f"policy set for {result['tenant']} {result['scope']} {result['target']}".rstrip()
    )


def _json_file(path: str, what: str) -> dict[str, Any]:
    raw = read_key_file(path, what) if path != "-" else sys.stdin.buffer.read()
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise BadInputError(f"{what} {path}: expected JSON, seen invalid data ({exc})") from exc
    if not isinstance(doc, dict):
        raise BadInputError(f"{what} {path}: expected a JSON object, seen {type(doc).__name__}")
    return doc


def _policy_dry_run(args: argparse.Namespace) -> int:
    doc = _json_file(args.file, "policy file")
    claims = None if args.claims is None else _json_file(args.claims, "claims file")
    with _client(args) as c:
        result = c.dry_run_policy(doc, tenant=args.tenant, audit_entry=args.audit_entry, claims=claims)
    lines = [f"{'released' if result['allowed'] else 'denied'} under this policy (tenant {result['tenant']})"]
    source = result["source"]
    if "recorded_decision" in source:
        verb = "changed from" if result["changed"] else "same as"
        lines[0] += (
            f": {verb} the recorded {source['recorded_decision']} of audit entry {source['audit_entry']}"
        )
    lines += [f"  deciding: {d}" for d in result["deciding"]]
    lines += [f"  warning: {w}" for w in result["warnings"]]
    return _print(args, result, "\n".join(lines))


def _refvalues_add(args: argparse.Namespace) -> int:
    with _client(args) as c:
        n = c.add_refvalues(args.name, args.values, tenant=args.tenant)
    return _print(args, {"added": n}, f"{n} reference value(s) added to {args.name}")


def _platform_register(args: argparse.Namespace) -> int:
    with _client(args) as c:
        certificate = read_key_file(args.certificate, "platform certificate")
        fingerprint = c.register_platform(certificate, description=args.description)
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
    serve.add_argument(
        "--sgx-collateral",
        help="directory of Intel SGX collateral: PCK/Root CA CRLs (*crl*.der|.pem, *.crl), "
        "tcb_info*.json + tcb_info_issuer_chain.pem, qe_identity.json",
    )
    serve.add_argument("--admin-token-file", help="admin token file (created 0600 if missing)")
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the listen socket (state is in the database; "
        "the --auth-rate limit applies per worker)",
    )
    serve.add_argument(
        "--db-pool-size",
        type=int,
        default=8,
        help="PostgreSQL connections per pool (default 8); each worker process keeps two pools, so "
        "a deployment needs replicas x workers x 2 x N connections (or PgBouncer, transaction mode)",
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
        "--console",
        action="store_true",
        help="serve the operator console at /console (sign in with an admin or tenant API token)",
    )
    serve.set_defaults(func=_serve)

    audit_sub = _group(sub, "audit", "audit log tools")
    verify = audit_sub.add_parser(
        "verify", help="check the audit chains, their keyed heads and checkpoints; exit 3 if broken"
    )
    _with_master_key(verify)
    verify.add_argument(
        "--checkpoint",
        action="append",
        metavar="FILE",
        help="repeatable: a checkpoint exported earlier; rows it covers must still be there, unchanged",
    )
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_audit_verify)
    checkpoint = audit_sub.add_parser(
        "checkpoint", help="sign a checkpoint over every chain head now and export it (keep it elsewhere)"
    )
    _with_master_key(checkpoint)
    checkpoint.add_argument("--out", required=True, help="file to write the checkpoint to (mode 0600)")
    checkpoint.add_argument(
        "--stored", action="store_true", help="export the newest checkpoint the broker stored instead"
    )
    checkpoint.set_defaults(func=_audit_checkpoint)

    token_sub = _group(sub, "token", "API tokens")
    create = token_sub.add_parser("create", help="create a publisher token (admin)")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--scope", action="append", required=True, help="repeatable: keys:write, keys:read, ..."
    )
    create.add_argument("--description", default="")
    _with_http(create)
    create.set_defaults(func=_token_create)

    policy_sub = _group(sub, "policy", "release policies")
    pset = policy_sub.add_parser("set", help="set a release policy from a JSON file ('-' = stdin)")
    pset.add_argument("file")
    pset.add_argument("--scope", default="tenant", choices=["tenant", "repository", "key"])
    pset.add_argument("--target")
    pset.add_argument("--tenant")
    _with_http(pset)
    pset.set_defaults(func=_policy_set)

    dry = policy_sub.add_parser(
        "dry-run",
        help="evaluate a policy (not stored) against a recorded attestation or given claims; "
        "says which condition decides",
    )
    dry.add_argument("file", help="policy JSON ('-' = stdin)")
    source = dry.add_mutually_exclusive_group(required=True)
    source.add_argument("--audit-entry", type=int, help="id of a recorded release or denial (audit list)")
    source.add_argument("--claims", help="claims JSON file (as the verifier produces them)")
    dry.add_argument("--tenant")
    _with_http(dry)
    dry.set_defaults(func=_policy_dry_run)

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
