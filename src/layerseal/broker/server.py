"""Assembling and running a broker: database, master key, admin bootstrap, uvicorn.

``workers > 1`` runs uvicorn's multi-process supervisor: the parent migrates the schema,
creates the master key and the admin token, then each spawned worker opens its own broker
from the same options (handed over in an environment variable).  All state is in the
database, so workers need no coordination; only the RCAR rate limiter is per worker.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from layerseal.attest.verifiers import TeeTrust, TeeVerifiers
from layerseal.broker import database
from layerseal.broker.app import create_app
from layerseal.broker.audit import ChainReport
from layerseal.broker.auditlog import verify_database
from layerseal.broker.bootstrap import ensure_admin_token
from layerseal.broker.jsonlog import configure_logging
from layerseal.broker.masterkey import open_custody
from layerseal.broker.ratelimit import RateLimiter
from layerseal.broker.service import Broker, BrokerConfig, start_policy_processes
from layerseal.broker.store import Store
from layerseal.errors import BadInputError

DEFAULT_DB = "layerseal-broker.db"
WORKER_OPTIONS_ENV = "LAYERSEAL_BROKER_WORKER_OPTIONS"
MAX_WORKERS = 64
WORKER_HEALTHCHECK_SECONDS = 60
MAX_HEADER_BYTES = 64 * 1024  # request line and headers of one request

log = logging.getLogger("layerseal.broker")


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request line and headers.

    httptools buffers a header until it is complete, so the bound is on the bytes received
    while a request's head is incomplete; past it the connection gets 431 and is closed.
    """

    _head_pending = True
    _head_bytes = 0

    def on_message_begin(self) -> None:
        self._head_pending, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_pending = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._head_pending:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_pending and self._head_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            body = json.dumps(
                {
                    "type": "https://layerseal.dev/problems/headers-too-large",
                    "title": "Request Header Fields Too Large",
                    "status": 431,
                    "detail": f"request headers: expected at most {MAX_HEADER_BYTES} bytes, seen more",
                }
            ).encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/problem+json\r\nconnection: close\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            self.transport.close()


def default_admin_token_file(db_url: str) -> Path:
    """``<sqlite file>.admin-token``, or ``./broker-admin.token`` for a server database."""
    key_file = default_master_key_file(db_url)
    if key_file is not None:
        return key_file.with_name(key_file.name.removesuffix(".master-key") + ".admin-token")
    return Path("broker-admin.token")


def default_master_key_file(db_url: str) -> Path | None:
    """``<db file>.master-key`` beside a SQLite database; none for PostgreSQL."""
    url = database.normalize_url(db_url)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :] + ".master-key")
    return None


def open_broker(
    db_url: str,
    *,
    master_key_file: Path | None = None,
    create_master_key: bool = False,
    config: BrokerConfig | None = None,
    relaxed_audit_sync: bool = False,
    master_key_uri: str | None = None,
    migrate: bool = True,
    pool_size: int = database.DEFAULT_POOL_SIZE,
    verifiers: TeeVerifiers | None = None,
) -> Broker:
    """A broker on *db_url* (schema migrated) with its master key loaded.

    *master_key_uri* (``pkcs11:...``) puts the master key in a token; it wins over the file.
    """
    custody = open_custody(
        master_key_file or default_master_key_file(db_url), master_key_uri, create=create_master_key
    )
    engine = database.create_db_engine(db_url, pool_size=pool_size)
    if migrate:
        database.migrate(engine)
    return Broker(Store(engine, relaxed_audit_sync=relaxed_audit_sync), custody, config, verifiers=verifiers)


@dataclass(frozen=True)
class ServeOptions:
    db_url: str = DEFAULT_DB
    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None
    master_key_file: Path | None = None
    master_key_uri: str | None = None
    snp_vcek_cache: Path | None = None
    snp_crl: Path | None = None
    tdx_collateral: Path | None = None
    sgx_collateral: Path | None = None
    admin_token_file: Path | None = None
    log_level: str = "info"
    auth_rate: float = 20.0
    auth_burst: float = 100.0
    relaxed_audit_sync: bool = False
    workers: int = 1
    db_pool_size: int = database.DEFAULT_POOL_SIZE
    console: bool = False  # serve the operator console under /console
    trusted_proxies: tuple[str, ...] = ()
    config: BrokerConfig = field(default_factory=BrokerConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.db_pool_size <= 1000:
            raise BadInputError(f"--db-pool-size: expected 1..1000, seen {self.db_pool_size}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise BadInputError(f"--workers: expected 1..{MAX_WORKERS}, seen {self.workers}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise BadInputError("TLS: expected both --tls-cert and --tls-key, or neither")
        if not 0 <= self.port <= 65535:
            raise BadInputError(f"listen port: expected 0..65535, seen {self.port}")


def _options_to_json(options: ServeOptions) -> str:
    return json.dumps(asdict(options), default=str)


def _options_from_json(text: str) -> ServeOptions:
    raw: dict[str, Any] = json.loads(text)
    paths = (
        "tls_cert",
        "tls_key",
        "master_key_file",
        "snp_vcek_cache",
        "snp_crl",
        "tdx_collateral",
        "sgx_collateral",
    )
    for name in paths:
        raw[name] = None if raw.get(name) is None else Path(raw[name])
    raw["admin_token_file"] = None  # the parent made sure an admin can log in
    raw["config"] = BrokerConfig(**raw["config"])
    raw["trusted_proxies"] = tuple(raw.get("trusted_proxies") or ())
    return ServeOptions(**raw)


def _open_for_serving(options: ServeOptions, *, migrate: bool = True) -> Broker:
    configure_logging(options.log_level)
    # trust material is read now, so a bad directory fails the start, not the first attestation
    verifiers = TeeVerifiers(
        TeeTrust(options.snp_vcek_cache, options.snp_crl, options.tdx_collateral, options.sgx_collateral)
    )
    return open_broker(
        options.db_url,
        master_key_file=options.master_key_file,
        create_master_key=migrate,  # workers only load what the parent created
        config=options.config,
        relaxed_audit_sync=options.relaxed_audit_sync,
        master_key_uri=options.master_key_uri,
        migrate=migrate,
        verifiers=verifiers,
        pool_size=options.db_pool_size,
    )


def worker_app() -> Any:
    """The ASGI app of one worker process (uvicorn factory for ``workers > 1``)."""
    text = os.environ.get(WORKER_OPTIONS_ENV)
    if not text:
        raise BadInputError(f"broker worker: expected ${WORKER_OPTIONS_ENV} from 'broker serve', seen none")
    options = _options_from_json(text)
    broker = _open_for_serving(options, migrate=False)
    app = create_app(
        broker, limiter=RateLimiter(options.auth_rate, options.auth_burst), console=options.console
    )
    start_policy_processes()
    _tune_gc()
    return app


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections while serving.

    A request allocates thousands of short-lived containers, so the default gen-0
    threshold (700) collects every request or two, and full collections walk every
    long-lived object (modules, SQLAlchemy, compiled statements).  Freezing what startup
    built and raising the thresholds removed the p99 spikes seen under load.
    """
    gc.freeze()
    gc.set_threshold(20000, 20, 50)


def serve(options: ServeOptions) -> None:
    """Run the broker until interrupted."""
    import uvicorn

    broker = _open_for_serving(options)
    if options.config.allow_sample_tee:
        banner = (
            "WARNING: --allow-sample-tee: this broker accepts UNSIGNED 'sample' TEE evidence; "
            "anyone can claim any measurement. For development only, never in production."
        )
        log.warning(banner)
        print(banner, file=sys.stderr, flush=True)
    # the bootstrap admin token goes to a 0600 file, never to stdout (often a log)
    token_file = options.admin_token_file or default_admin_token_file(options.db_url)
    created = not token_file.exists()
    ensure_admin_token(broker, token_file)
    if created and token_file.exists():
        print(f"admin token written to {token_file} (mode 0600)", flush=True)
    common: dict[str, Any] = {
        "host": options.host,
        "port": options.port,
        "ssl_certfile": str(options.tls_cert) if options.tls_cert else None,
        "ssl_keyfile": str(options.tls_key) if options.tls_key else None,
        "log_config": None,
        "access_log": False,
        "lifespan": "off",
        "server_header": False,
        "http": LimitedHttpToolsProtocol,
        # X-Forwarded-For names the client only when the peer is a proxy we were told to trust
        "proxy_headers": bool(options.trusted_proxies),
        "forwarded_allow_ips": list(options.trusted_proxies) or None,
    }
    if options.workers == 1:
        app = create_app(
            broker, limiter=RateLimiter(options.auth_rate, options.auth_burst), console=options.console
        )
        start_policy_processes()
        _tune_gc()
        uvicorn.run(app, **common)
    else:
        # the supervisor serves nothing itself; workers open their own engines (after a
        # fork-free spawn, so no connection or thread is shared across processes)
        broker.close()
        broker.store.dispose()
        os.environ[WORKER_OPTIONS_ENV] = _options_to_json(options)
        uvicorn.run(
            "layerseal.broker.server:worker_app",
            factory=True,
            workers=options.workers,
            # uvicorn kills a worker whose ping thread has not answered within this time; its
            # 5 s default killed healthy workers (and their in-flight releases) on a loaded
            # host, so only a worker hung for a minute is replaced
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
            **common,
        )
    sys.stdout.flush()


def audit_verify(
    db_url: str,
    *,
    master_key_file: Path | None = None,
    master_key_uri: str | None = None,
    checkpoints: Sequence[Path] = (),
) -> ChainReport:
    """Check the audit log of a broker database: chains, keyed heads, checkpoints.

    The head MACs and checkpoint signatures need the audit key, so the master key too.
    """
    custody = open_custody(master_key_file or default_master_key_file(db_url), master_key_uri)
    engine = database.create_db_engine(db_url)
    try:
        return verify_database(Store(engine), custody, checkpoints)
    finally:
        engine.dispose()
