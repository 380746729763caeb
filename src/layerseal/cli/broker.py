"""``layerseal broker``: run the key broker, verify its audit chain, administer it over HTTP."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from layerseal.cli import _broker_env as broker_env
from layerseal.cli._broker_env import TOKEN_ENV
from layerseal.cli._subcommands import command_group
from layerseal.cli.common import read_key_file
from layerseal.errors import BadInputError, NotFoundError
from layerseal.wire.jsonload import loads_object


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInputError(f"--listen: expected HOST:PORT, seen {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on before anything is created (the server
    itself would only fail after opening the database and writing the admin token)."""
    import socket

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
        import ssl

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
    key_file, token_file = _serve_files(args)
    _check_port(host, port)
    serve(
        ServeOptions(
            db_url=args.db,
            host=host,
            port=port,
            tls_cert=Path(args.tls_cert) if args.tls_cert else None,
            tls_key=Path(args.tls_key) if args.tls_key else None,
            master_key_file=key_file,
            master_key_uri=args.master_key,
            snp_vcek_cache=Path(args.snp_vcek_cache) if args.snp_vcek_cache else None,
            snp_crl=Path(args.snp_crl) if args.snp_crl else None,
            tdx_collateral=Path(args.tdx_collateral) if args.tdx_collateral else None,
            sgx_collateral=Path(args.sgx_collateral) if args.sgx_collateral else None,
            admin_token_file=token_file,
            log_level=args.log_level,
            auth_rate=args.auth_rate,
            auth_burst=args.auth_burst,
            relaxed_audit_sync=args.audit_sync == "normal",
            workers=args.workers,
            db_pool_size=args.db_pool_size,
            console=args.console,
            trusted_proxies=tuple(args.trusted_proxy or ()),
            config=BrokerConfig(
                token_ttl=args.token_ttl, session_ttl=args.session_ttl, allow_sample_tee=args.allow_sample_tee
            ),
        )
    )
    return 0


def _serve_files(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """The master key file and admin token file a broker uses: the key beside a SQLite
    database unless named; for PostgreSQL it must be named (or be in the environment or a
    token).  The admin token goes beside the key file unless named."""
    from layerseal.broker.masterkey import ENV_VAR
    from layerseal.broker.server import default_master_key_file

    key_file = Path(args.master_key_file) if args.master_key_file else default_master_key_file(args.db)
    if key_file is None and args.master_key is None and not os.environ.get(ENV_VAR):
        raise BadInputError(
            f"--master-key-file: expected a master key file for a PostgreSQL broker (a database URL has "
            f"no directory to keep it beside), seen none; or ${broker_env.MASTER_KEY_FILE_ENV}, "
            f"${ENV_VAR} or --master-key pkcs11:..."
        )
    if args.admin_token_file:
        return key_file, Path(args.admin_token_file)
    return key_file, None if key_file is None else broker_env.admin_token_beside(key_file)


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
    db = os.environ.get(broker_env.DB_ENV)
    p.add_argument(
        "--db",
        required=db is None,
        default=db,
        help=f"SQLite path/URL or postgresql://... (${broker_env.DB_ENV})",
    )
    p.add_argument(
        "--master-key-file",
        default=broker_env.default_master_key_file(),
        help="master key file (default: beside a SQLite database); or $LAYERSEAL_MASTER_KEY",
    )
    broker_env.with_epilog(p, broker_env.SERVER_ENV)
    p.add_argument("--master-key", help="master key in a PKCS#11 token (pkcs11: URI, as for serve)")


def _client(args: argparse.Namespace) -> Any:
    import ssl

    from layerseal.kbs.adminclient import AdminClient

    token = args.token or os.environ.get(TOKEN_ENV)
    if args.token_file:
        token = read_key_file(args.token_file, "--token-file").decode(errors="replace").strip()
    if not token:
        raise BadInputError(f"broker token: expected --token-file, --token or ${TOKEN_ENV}, seen none")
    if args.ca:
        read_key_file(args.ca, "--ca")
    try:
        return AdminClient(args.url, token, verify=args.ca or True)
    except ssl.SSLError as exc:
        raise BadInputError(f"--ca {args.ca}: expected PEM CA certificates, seen {exc.reason}") from exc


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


def _token_create(args: argparse.Namespace) -> int:
    from layerseal.cli._broker_admin import parse_duration

    expires_in = parse_duration(args.expires_in) if args.expires_in else None
    if args.expires is not None:
        if expires_in is not None:
            raise BadInputError("--expires and --expires-in: expected one of them, seen both")
        # a date or a duration, sent as the lifetime left from now
        expires_in = max(1, round(parse_expires(args.expires, time.time()) - time.time()))
    with _client(args) as c:
        result = c.create_token_expiring(
            args.tenant, args.scope, description=args.description, expires_in=expires_in
        )
    if args.out:
        from layerseal.broker.masterkey import write_private_file_once

        if not write_private_file_once(Path(args.out), result["token"] + "\n"):
            raise BadInputError(f"--out {args.out}: expected a new file, seen an existing one")
        shown = {k: v for k, v in result.items() if k != "token"}
        return _print(
            args,
            {**shown, "token_file": args.out},
            f"token {result['token_id']} written to {args.out} (0600)",
        )
    text = f"token {result['token_id']} (shown once): {result['token']}"
    return _print(args, result, text)


def _policy_set(args: argparse.Namespace) -> int:
    doc = _json_file(args.file, "policy file")
    with _client(args) as c:
        result = c.set_policy(doc, scope=args.scope, target=args.target, tenant=args.tenant)
    return _print(
        args, result, f"policy set for {result['tenant']} {result['scope']} {result['target']}".rstrip()
    )


def _json_file(path: str, what: str) -> dict[str, Any]:
    raw = read_key_file(path, what) if path != "-" else sys.stdin.buffer.read()
    return loads_object(raw, f"{what} {path}")


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


def _with_http(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get(broker_env.URL_ENV, broker_env.DEFAULT_URL),
        help=f"broker URL (${broker_env.URL_ENV}; default {broker_env.DEFAULT_URL})",
    )
    broker_env.with_epilog(p, broker_env.CLIENT_ENV)
    p.add_argument("--token-file", help="file holding an API token")
    p.add_argument("--token", help=argparse.SUPPRESS)
    p.add_argument("--ca", help="CA bundle to verify the broker's TLS certificate")
    p.add_argument("--json", action="store_true", help="print JSON")


def register(subparsers: Any) -> None:
    sub = command_group(subparsers, "broker", "the key broker (security service)")

    serve = sub.add_parser(
        "serve",
        help="run the broker (plain HTTP on 127.0.0.1:8080 unless --listen/--tls-*)",
        epilog=broker_env.SERVER_ENV,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--db",
        default=broker_env.default_db(),
        help=f"SQLite path/URL or postgresql://... (${broker_env.DB_ENV})",
    )
    serve.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    serve.add_argument("--tls-cert")
    serve.add_argument("--tls-key")
    serve.add_argument(
        "--master-key-file",
        default=broker_env.default_master_key_file(),
        help=f"master key (0600, created if missing; ${broker_env.MASTER_KEY_FILE_ENV}); "
        "or $LAYERSEAL_MASTER_KEY",
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
    serve.add_argument(
        "--admin-token-file",
        help="admin token file (created 0600 if missing; default: beside the master key file)",
    )
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

    audit_sub = command_group(sub, "audit", "audit log tools")
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

    token_sub = command_group(sub, "token", "API tokens")
    create = token_sub.add_parser("create", help="create a publisher token (admin)")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--scope", action="append", required=True, help="repeatable: keys:write, keys:read, ..."
    )
    create.add_argument("--description", default="")
    create.add_argument(
        "--expires", help="the token stops working after a duration (30d, 12h, 90m) or at a UTC date/time"
    )
    create.add_argument("--out", help="write the token to this new file (0600) instead of printing it")
    create.add_argument("--expires-in", help="lifetime: 3600, 12h, 30d, 2w (default: until revoked)")
    _with_http(create)
    create.set_defaults(func=_token_create)

    policy_sub = command_group(sub, "policy", "release policies")
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

    refv_sub = command_group(sub, "refvalues", "reference values")
    plat_sub = command_group(sub, "platform", "trusted sim platforms")
    from layerseal.cli._broker_admin import register_admin
    from layerseal.cli._broker_ops import register_ops

    register_ops(sub)
    keys_sub = command_group(sub, "keys", "layer keys")
    groups = {"token": token_sub, "policy": policy_sub, "refvalues": refv_sub, "platform": plat_sub}
    register_admin({**groups, "keys": keys_sub, "audit": audit_sub}, _client, _with_http)
