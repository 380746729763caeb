"""The broker's behaviour, independent of HTTP: publishers, RCAR attestation, key release.

Every method takes plain values, returns plain values and raises layerseal errors; the
ASGI layer only translates.  State lives in the ``Store``; the only in-process state is
caches of pure functions (compiled policies, verified JWTs, policy decisions keyed by the
tenant's rules generation), the shared JWT key and the audit committer.  Audit rows go
through ``AuditCommitter``: a call returns (and an HTTP response leaves) only once its row
is committed, but concurrent requests share the commit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from layerseal.attest import rcar
from layerseal.attest.claims import Claims, Verifier
from layerseal.attest.verifiers import SUPPORTED_TEES, TeeVerifiers
from layerseal.attest.x509util import certificate_fingerprint, load_certificate
from layerseal.broker import admin, policy
from layerseal.broker.auditlog import open_audit_committer
from layerseal.broker.custody import KeyCustody, record_aad
from layerseal.broker.store import (
    ApiTokenRow,
    KeyRow,
    PlatformRow,
    ReleaseSnapshot,
    SessionRow,
    Store,
    TenantRules,
    keys_json,
)
from layerseal.broker.tokens import (
    TokenSigner,
    check_scopes,
    new_api_token,
    split_api_token,
    token_matches,
)
from layerseal.crypto import jwe
from layerseal.crypto.keys import public_key_from_jwk
from layerseal.errors import BadInputError, DeniedError, LayersealError, NotFoundError
from layerseal.image.digest import Digest
from layerseal.image.encryption import PrivateOptions
from layerseal.kbs import packets
from layerseal.kbs.constants import PROTOCOL_VERSION
from layerseal.kbs.problems import (
    ForbiddenError,
    PolicyDeniedError,
    UnauthenticatedError,
    UnavailableError,
)

log = logging.getLogger("layerseal.broker")

ADMIN_TENANT = "*"
_REPO_RE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_REF_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SIGNING_SECRET = "token-signing-key"  # noqa: S105 -- a row name, not a secret
_CHALLENGE_SECRET = "challenge-mac-key"  # noqa: S105 -- a row name, not a secret


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class BrokerConfig:
    """Tunables; defaults follow KBS (5 minute sessions and tokens)."""

    session_ttl: float = 300.0
    token_ttl: float = 300.0
    max_batch: int = 256
    issuer: str = "layerseal-broker"
    # 'sample' evidence is unsigned: anyone can claim any measurement with it
    allow_sample_tee: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.token_ttl <= 86400 or not 1 <= self.session_ttl <= 86400:
            raise BadInputError("broker TTLs: expected 1..86400 seconds")
        if self.max_batch < 1:
            raise BadInputError("broker limits: expected positive values")


@dataclass(frozen=True)
class Principal:
    """An authenticated publisher or admin."""

    token_id: str
    tenant: str
    scopes: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def require(self, scope: str, tenant: str | None = None) -> None:
        if not self.is_admin and scope not in self.scopes:
            raise ForbiddenError(
                f"API token {self.token_id}: expected scope {scope!r}, seen {list(self.scopes)}"
            )
        if tenant is not None and not self.is_admin and tenant != self.tenant:
            raise ForbiddenError(
                f"API token {self.token_id}: expected tenant {tenant!r}, seen {self.tenant!r}"
            )

    def tenant_for(self, requested: Any) -> str:
        """The tenant a request acts on: the token's own, or the one an admin names."""
        if requested is None:
            if self.tenant == ADMIN_TENANT:
                raise BadInputError("tenant: expected a 'tenant' field (admin tokens span all tenants)")
            return self.tenant
        tenant = packets.check_tenant(requested)
        if not self.is_admin and tenant != self.tenant:
            raise ForbiddenError(
                f"API token {self.token_id}: expected tenant {self.tenant!r}, seen {tenant!r}"
            )
        return tenant


@dataclass(frozen=True)
class Attested:
    """What a valid session or token proves: verified claims and the key to wrap to."""

    claims: Mapping[str, Any]
    tee_pubkey: Mapping[str, Any]
    jti: str
    evidence_digest: str
    subject: str
    claims_digest: str = ""  # sha256 of the sorted claims JSON (decision cache key); "" = compute

    def digest(self) -> str:
        return self.claims_digest or _claims_digest(self.claims)


def _claims_digest(claims: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).hexdigest()


@dataclass
class _Outcome:
    """A judged release: the keys or the refusal, and the audit row to commit before either."""

    attested: Attested
    keks: dict[str, bytes] | None
    error: LayersealError | None
    entry: dict[str, Any]
    n_keys: int

    def result(self) -> tuple[Attested, dict[str, bytes]]:
        if self.error is not None:
            raise self.error
        assert self.keks is not None
        return self.attested, self.keks


_POLICY_PROCESSES = 2
_POOL_START_S = 60.0  # starting the processes (imports) is not evaluation: it has its own bound
_pool: ProcessPoolExecutor | None = None
_pool_ready: list[Future[Any]] = []
_pool_lock = threading.Lock()


def _exit_with_parent(parent: int) -> None:
    """Evaluation process initializer: exit once the broker process is gone.

    Nothing else would end it: a worker killed by its supervisor never shuts its pool down,
    and the pool's queue stays open in every sibling, so no end-of-file ever arrives.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="layerseal-parent-watch", daemon=True).start()


def _policy_pool() -> tuple[ProcessPoolExecutor, list[Future[Any]]]:
    """The evaluation processes, shared by every broker of this process, started on first
    use, and the warm-up evaluations that tell when each has started."""
    global _pool, _pool_ready
    with _pool_lock:
        if _pool is None:
            # spawned, not forked: the broker has threads (audit committer) and open sockets
            _pool = ProcessPoolExecutor(
                _POLICY_PROCESSES,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
            _pool_ready = [
                _pool.submit(policy.evaluate, policy.DEFAULT_POLICY, {}, {}) for _ in range(_POLICY_PROCESSES)
            ]
        return _pool, _pool_ready


def start_policy_processes() -> None:
    """Start the evaluation processes now (at serve time) rather than on the first release."""
    _policy_pool()


def _drop_pool(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


class PolicyRunner:
    """Policy evaluations off the event loop, each within a deadline.

    An evaluation is bounded in steps (``policy.STEP_LIMIT``, ~0.1 s of CPU here) and runs
    in one of two evaluation processes: a thread would not do, as an evaluating thread
    holds the GIL the event loop needs (measured: the loop lagged more with two policy
    threads than with evaluation on the loop itself).  A release whose evaluations do not
    finish within *deadline* (an overloaded machine) is denied, and nothing is cached.
    Evaluations are rare: decisions are cached per policy, claims and rules generation.
    """

    def __init__(self, deadline: float = 2.0) -> None:
        self.deadline = deadline

    async def decide(
        self, work: Mapping[tuple[str, str], tuple[policy.Policy, TenantRules]], claims: Mapping[str, Any]
    ) -> tuple[dict[tuple[str, str], policy.Decision], set[tuple[str, str]]]:
        """Decisions for *work*, and the keys of those that finished (the cacheable ones)."""
        loop = asyncio.get_running_loop()
        plain_claims = dict(claims)
        for attempt in (1, 2):
            pool, ready = _policy_pool()
            await asyncio.wait([asyncio.wrap_future(f) for f in ready], timeout=_POOL_START_S)
            try:
                futures = {
                    key: loop.run_in_executor(pool, policy.evaluate, pol, plain_claims, dict(rules.refvalues))
                    for key, (pol, rules) in work.items()
                }
                break
            except BrokenProcessPool:  # noticed at submission: start a new pool once
                _drop_pool(pool)
                if attempt == 2:
                    raise
        await asyncio.wait(futures.values(), timeout=self.deadline)
        decided: dict[tuple[str, str], policy.Decision] = {}
        finished: set[tuple[str, str]] = set()
        for key, future in futures.items():
            if future.done() and future.exception() is None:
                decided[key] = future.result()
                finished.add(key)
                continue
            if future.done() and isinstance(future.exception(), BrokenProcessPool):
                _drop_pool(pool)  # a worker died (killed, out of memory): the next call starts anew
                reason = "policy evaluation: expected a result, seen the evaluation process fail"
            else:
                future.cancel()
                reason = f"policy evaluation: expected within {self.deadline:g} s, seen longer"
            decided[key] = policy.Decision(False, reason, (reason,), ("evaluation failed",))
        return decided, finished

    def close(self) -> None:
        """Nothing to release: the evaluation processes are shared and end with this one."""


@dataclass
class _Pending:
    """A release waiting on policy evaluations: (policy digest, tenant) -> (policy, rules)."""

    work: dict[tuple[str, str], tuple[policy.Policy, TenantRules]]


@dataclass(frozen=True)
class Challenge:
    session_id: str
    nonce: str
    expires_at: float


@dataclass(frozen=True)
class OpenChallenge:
    """A verified challenge cookie: the TEE kind asked for, the nonce and its expiry."""

    tee: str
    nonce: str
    expires_at: float


@dataclass(frozen=True)
class KeyVersionInfo:
    version: int
    status: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "status": self.status, "created_at": self.created_at}


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant: str
    repository: str
    layer_digest: str
    created_at: float
    unused: bool
    revoked: bool
    versions: tuple[KeyVersionInfo, ...] = field(default=())

    @classmethod
    def of(cls, row: KeyRow) -> KeyInfo:
        return cls(
            row.key_id,
            row.tenant,
            row.repository,
            row.layer_digest,
            row.created_at,
            row.unused_at is not None,
            row.revoked_at is not None,
            tuple(KeyVersionInfo(v.version, v.status, v.created_at) for v in row.versions),
        )

    @property
    def current_version(self) -> int | None:
        active = [v.version for v in self.versions if v.status == "active"]
        return max(active) if active else None

    def to_json(self) -> dict[str, Any]:
        current = self.current_version
        return {
            "key_id": self.key_id,
            "tenant": self.tenant,
            "repository": self.repository,
            "layer_digest": self.layer_digest,
            "created_at": self.created_at,
            "unused": self.unused,
            "revoked": self.revoked,
            "current_version": current,
            "kid": None if current is None else packets.ResourcePath(self.tenant, self.key_id, current).kid,
            "versions": [v.to_json() for v in self.versions],
        }


def _b64(value: Any, what: str, *, max_len: int = 1 << 16) -> bytes:
    if not isinstance(value, str):
        raise BadInputError(f"{what}: expected a base64 string, seen {type(value).__name__}")
    if len(value) > max_len:
        raise BadInputError(f"{what}: expected at most {max_len} characters, seen {len(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInputError(f"{what}: expected standard base64, seen invalid text") from exc


def _str(
    obj: Mapping[str, Any], key: str, what: str, *, required: bool = True, max_len: int = 1024
) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise BadInputError(f"{what}: field {key!r} is missing (expected a string)")
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise BadInputError(f"{what}: field {key!r}: expected a string of at most {max_len} characters")
    return value


def check_repository(repo: Any) -> str:
    if not isinstance(repo, str) or len(repo) > 255 or not _REPO_RE.match(repo):
        raise BadInputError(
            f"repository: expected an OCI repository name like 'registry:5000/app', seen {str(repo)[:80]!r}"
        )
    return repo


class Broker:
    """The key broker service."""

    def __init__(
        self,
        store: Store,
        custody: KeyCustody,
        config: BrokerConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        verifiers: TeeVerifiers | None = None,
    ) -> None:
        self.store = store
        self.custody = custody
        self.config = config or BrokerConfig()
        self.clock = clock
        # this broker's TEE verifiers over its trust material (no process-wide registry)
        self.verifiers = verifiers or TeeVerifiers()
        sealed = store.get_or_create_secret(
            _SIGNING_SECRET,
            lambda: custody.seal(TokenSigner.generate_pem(), record_aad("secret", _SIGNING_SECRET)),
        )
        self.signer = TokenSigner(
            custody.unseal(sealed, record_aad("secret", _SIGNING_SECRET)), self.config.issuer
        )
        self._policies: dict[str, policy.Policy] = {}
        # verified token -> (claims, claims digest); revocation is still read per request
        self._tokens: OrderedDict[str, tuple[dict[str, Any], str]] = OrderedDict()
        self.audit_log = open_audit_committer(store, custody)
        self.policy_runner = PolicyRunner()
        # SQLite reads take microseconds in-process: a thread hop would cost more than it saves
        self._reads_off_loop = (
            None
            if store.engine.dialect.name == "sqlite"
            else ThreadPoolExecutor(8, thread_name_prefix="layerseal-read")
        )
        self._lock = threading.Lock()
        self._attest_count = 0
        self._challenge_key = custody.unseal(
            store.get_or_create_secret(
                _CHALLENGE_SECRET,
                lambda: custody.seal(os.urandom(32), record_aad("secret", _CHALLENGE_SECRET)),
            ),
            record_aad("secret", _CHALLENGE_SECRET),
        )
        self.listeners: list[Callable[[str, str, int], None]] = []  # (action, decision, keys) for metrics

    # ================================================================== publisher side

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise UnauthenticatedError(
                "publisher API: expected 'Authorization: Bearer <API token>', seen none"
            )
        token = authorization[len("Bearer ") :].strip()
        token_id = split_api_token(token)
        row = self.store.get_api_token(token_id)
        # compare even when the row is missing so timing does not reveal which ids exist
        stored = row.token_hash if row is not None else "0" * 64
        if not token_matches(token, stored) or row is None:
            raise UnauthenticatedError(
                "API token: expected a token issued by this broker, seen an unknown one"
            )
        if row.revoked_at is not None:
            raise UnauthenticatedError(f"API token {token_id}: expected active, seen revoked")
        if row.expires_at is not None and row.expires_at <= self.clock():
            raise UnauthenticatedError(
                f"API token {token_id}: expected unexpired, seen expired at {_utc(row.expires_at)}"
            )
        admin.check_token_use(self.store, row.token_id, self.clock())
        return Principal(row.token_id, row.tenant, row.scopes)

    def create_api_token(
        self,
        principal: Principal | None,
        tenant: str,
        scopes: Any,
        description: str = "",
        expires_at: Any = None,
    ) -> tuple[str, str]:
        """Issue a token (principal None = bootstrap); returns (token_id, token shown once).

        *expires_at* (epoch seconds) makes it stop working then; None: it works until revoked.
        """
        if principal is not None:
            principal.require("admin")
        if expires_at is not None:
            if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
                raise BadInputError("token request: field 'expires_at': expected epoch seconds (a number)")
            if not self.clock() < float(expires_at) < self.clock() + 10 * 366 * 86400:
                raise BadInputError(
                    f"token request: field 'expires_at': expected a time in the next 10 years, "
                    f"seen {_utc(float(expires_at)) if abs(expires_at) < 1e11 else expires_at}"
                )
        if tenant != ADMIN_TENANT:
            packets.check_tenant(tenant)
        checked = check_scopes(scopes)
        if "admin" in checked and tenant != ADMIN_TENANT:
            raise BadInputError(
                f"scopes: 'admin' is only for tenant {ADMIN_TENANT!r}, seen tenant {tenant!r}"
            )
        new = new_api_token()
        self.store.insert_api_token(
            ApiTokenRow(
                new.token_id,
                tenant,
                checked,
                new.token_hash,
                description[:200],
                self.clock(),
                None,
                None if expires_at is None else float(expires_at),
            )
        )
        self._audit(
            "token-create",
            "ok",
            tenant=None if tenant == ADMIN_TENANT else tenant,
            actor=self._who(principal),
            reason=f"token {new.token_id} scopes {' '.join(checked)}",
        )
        return new.token_id, new.token

    def list_api_tokens(self, principal: Principal) -> list[dict[str, Any]]:
        principal.require("admin")
        now = self.clock()
        return [
            {
                "token_id": r.token_id,
                "tenant": r.tenant,
                "scopes": list(r.scopes),
                "description": r.description,
                "created_at": r.created_at,
                "revoked": r.revoked_at is not None,
                "expires_at": r.expires_at,
                "expired": r.expires_at is not None and r.expires_at <= now,
            }
            for r in self.store.list_api_tokens(None)
        ]

    def revoke_api_token(self, principal: Principal, token_id: str) -> None:
        principal.require("admin")
        if not self.store.revoke_api_token(token_id):
            raise NotFoundError(f"API token {token_id[:40]!r}: expected an active token, seen none")
        self._audit("token-revoke", "ok", actor=self._who(principal), reason=f"token {token_id}")

    @staticmethod
    def _who(principal: Principal | None) -> str:
        return "bootstrap" if principal is None else f"token:{principal.token_id}"

    def _load_key(
        self, principal: Principal, key_id: str, scope: str, *, secrets_too: bool = False
    ) -> KeyRow:
        if not isinstance(key_id, str) or not packets.KEY_ID_RE.match(key_id):
            raise BadInputError(f"key id: expected 'k' + 26 base32 chars, seen {str(key_id)[:40]!r}")
        row = self.store.get_keys([key_id], with_secrets=secrets_too).get(key_id)
        # another tenant's key is reported as unknown: its existence is not ours to reveal
        if row is None or (not principal.is_admin and row.tenant != principal.tenant):
            raise NotFoundError(f"key {key_id}: expected a key of tenant {principal.tenant!r}, seen none")
        principal.require(scope, row.tenant)
        return row

    def _seal_kek(self, key_id: str, version: int, kek: bytes) -> bytes:
        return self.custody.seal(kek, record_aad("kek", key_id, version))

    def create_layer_key(self, principal: Principal, body: Mapping[str, Any]) -> tuple[KeyInfo, bytes]:
        """Create the KEK of a new image portion; returns its info and the CoCo key packet."""
        what = "create key request"
        tenant = principal.tenant_for(body.get("tenant"))
        principal.require("keys:write", tenant)
        repository = check_repository(body.get("repository"))
        digest = str(Digest.parse(_str(body, "layer_digest", what) or ""))
        optsdata = _b64(body.get("optsdata"), f"{what}: field 'optsdata'")
        PrivateOptions.from_json_bytes(optsdata, f"{what}: optsdata")
        key_id = packets.new_key_id()
        kek = secrets.token_bytes(32)
        packet = packets.make_key_packet(packets.ResourcePath(tenant, key_id, 1).kid, kek, optsdata)
        self.store.insert_key(key_id, tenant, repository, digest, self._seal_kek(key_id, 1, kek))
        row = self.store.get_keys([key_id])[key_id]
        self._audit(
            "key-create",
            "ok",
            tenant=tenant,
            keys=[f"{tenant}/{key_id}.1"],
            actor=self._who(principal),
            reason=f"{repository} {digest}",
        )
        return KeyInfo.of(row), packet

    def list_keys(self, principal: Principal, tenant: Any = None, repository: Any = None) -> list[KeyInfo]:
        chosen = None if tenant is None and principal.is_admin else principal.tenant_for(tenant)
        principal.require("keys:read", chosen)
        repo = None if repository is None else check_repository(repository)
        return [KeyInfo.of(r) for r in self.store.list_keys(chosen, repo)]

    def get_key(self, principal: Principal, key_id: str) -> KeyInfo:
        return KeyInfo.of(self._load_key(principal, key_id, "keys:read"))

    def rotate_key(self, principal: Principal, key_id: str, body: Mapping[str, Any]) -> tuple[KeyInfo, bytes]:
        """New KEK version; the optsdata comes in the clear or as the old packet to re-wrap."""
        row = self._load_key(principal, key_id, "keys:write", secrets_too=True)
        if row.revoked_at is not None:
            raise ForbiddenError(f"key {key_id}: expected an unrevoked key to rotate, seen revoked")
        what = "rotate key request"
        if body.get("optsdata") is not None:
            optsdata = _b64(body.get("optsdata"), f"{what}: field 'optsdata'")
        elif body.get("packet") is not None:
            packet = packets.KeyPacket.parse(_b64(body.get("packet"), f"{what}: field 'packet'"))
            path = packet.resource
            if path.key_id != key_id or path.version is None:
                raise BadInputError(
                    f"{what}: packet kid: expected a version of key {key_id}, seen {packet.kid[:100]!r}"
                )
            old = {v.version: v for v in row.versions}.get(path.version)
            if old is None:
                raise NotFoundError(f"key {key_id} version {path.version}: expected to exist, seen none")
            kek_old = self.custody.unseal(old.sealed_kek, record_aad("kek", key_id, old.version))
            optsdata = packets.unwrap_key_packet(_b64(body["packet"], what), kek_old)
        else:
            raise BadInputError(f"{what}: expected field 'optsdata' or 'packet', seen neither")
        PrivateOptions.from_json_bytes(optsdata, f"{what}: optsdata")
        kek = secrets.token_bytes(32)
        for _ in range(5):
            version = self.store.next_version(key_id)
            if self.store.insert_version(key_id, version, self._seal_kek(key_id, version, kek)):
                break
        else:
            raise UnavailableError(
                f"key {key_id}: expected to add a version, seen repeated concurrent rotations"
            )
        if body.get("retire_previous") is True:
            for v in row.versions:
                if v.status == "active":
                    self.store.set_version_status(key_id, v.version, "retired")
        new_packet = packets.make_key_packet(
            packets.ResourcePath(row.tenant, key_id, version).kid, kek, optsdata
        )
        self._audit(
            "key-rotate",
            "ok",
            tenant=row.tenant,
            keys=[f"{row.tenant}/{key_id}.{version}"],
            actor=self._who(principal),
            reason="rotated",
        )
        return KeyInfo.of(self.store.get_keys([key_id])[key_id]), new_packet

    def set_version_status(self, principal: Principal, key_id: str, version: int, status: str) -> KeyInfo:
        if status not in ("retired", "revoked", "active"):
            raise BadInputError(f"key version status: expected retired/revoked/active, seen {status[:20]!r}")
        row = self._load_key(principal, key_id, "keys:write")
        if version not in {v.version for v in row.versions}:
            raise NotFoundError(f"key {key_id} version {version}: expected to exist, seen none")
        if self.store.set_version_status(key_id, version, status) == 0:
            raise ForbiddenError(
                f"key {key_id} version {version}: expected a changeable status, seen revoked"
            )
        self._audit(
            f"key-{status}",
            "ok",
            tenant=row.tenant,
            keys=[f"{row.tenant}/{key_id}.{version}"],
            actor=self._who(principal),
            reason=status,
        )
        return KeyInfo.of(self.store.get_keys([key_id])[key_id])

    def revoke_key(self, principal: Principal, key_id: str) -> KeyInfo:
        row = self._load_key(principal, key_id, "keys:write")
        self.store.set_version_status(key_id, None, "revoked")
        self.store.set_key_flags(key_id, revoked_at=self.clock())
        self._audit(
            "key-revoke",
            "ok",
            tenant=row.tenant,
            keys=[f"{row.tenant}/{key_id}"],
            actor=self._who(principal),
            reason="revoked",
        )
        return KeyInfo.of(self.store.get_keys([key_id])[key_id])

    def mark_unused(self, principal: Principal, key_id: str, unused: bool) -> KeyInfo:
        row = self._load_key(principal, key_id, "keys:write")
        self.store.set_key_flags(key_id, unused_at=self.clock() if unused else None)
        self._audit(
            "key-unused" if unused else "key-used",
            "ok",
            tenant=row.tenant,
            keys=[f"{row.tenant}/{key_id}"],
            actor=self._who(principal),
            reason="marked",
        )
        return KeyInfo.of(self.store.get_keys([key_id])[key_id])

    def delete_key(self, principal: Principal, key_id: str) -> None:
        """Destroy a key marked unused or revoked (clean-up); anything else is refused."""
        row = self._load_key(principal, key_id, "keys:write")
        if row.unused_at is None and row.revoked_at is None:
            raise ForbiddenError(
                f"key {key_id}: expected to be marked unused or revoked before deletion, seen in use"
            )
        self.store.delete_key(key_id)
        self._audit(
            "key-delete",
            "ok",
            tenant=row.tenant,
            keys=[f"{row.tenant}/{key_id}"],
            actor=self._who(principal),
            reason="deleted",
        )

    # ------------------------------------------------------------------ policies and reference values

    def set_policy(self, principal: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        tenant = principal.tenant_for(body.get("tenant"))
        principal.require("policy:write", tenant)
        scope, target = self._policy_target(tenant, body.get("scope", "tenant"), body.get("target"))
        parsed = policy.Policy.parse(body.get("policy"))
        admin.check_policy_for(self, tenant, parsed)
        self.store.put_policy(tenant, scope, target, json.dumps(parsed.document, sort_keys=True))
        self._audit(
            "policy-set",
            "ok",
            tenant=tenant,
            actor=self._who(principal),
            reason=f"{scope} {target} {parsed.digest[:16]}",
        )
        return {
            "tenant": tenant,
            "scope": scope,
            "target": target,
            "policy": parsed.document,
            "digest": parsed.digest,
        }

    def delete_policy(self, principal: Principal, tenant: Any, scope: Any, target: Any) -> None:
        t = principal.tenant_for(tenant)
        principal.require("policy:write", t)
        s, tg = self._policy_target(t, scope or "tenant", target)
        if not self.store.delete_policy(t, s, tg):
            raise NotFoundError(f"policy {t}/{s}/{tg}: expected to exist, seen none")
        self._audit("policy-delete", "ok", tenant=t, actor=self._who(principal), reason=f"{s} {tg}")

    def list_policies(self, principal: Principal, tenant: Any = None) -> list[dict[str, Any]]:
        chosen = None if tenant is None and principal.is_admin else principal.tenant_for(tenant)
        if "policy:read" not in principal.scopes:
            principal.require("policy:write", chosen)
        out = [
            {
                "tenant": r.tenant,
                "scope": r.scope,
                "target": r.target,
                "policy": json.loads(r.document),
                "updated_at": r.updated_at,
            }
            for r in self.store.list_policies(chosen)
        ]
        return out

    @staticmethod
    def _policy_target(tenant: str, scope: Any, target: Any) -> tuple[str, str]:
        if scope == "tenant":
            if target not in (None, ""):
                raise BadInputError("policy target: expected none for scope 'tenant'")
            return "tenant", ""
        if scope == "repository":
            return "repository", check_repository(target)
        if scope == "key":
            if not isinstance(target, str) or not packets.KEY_ID_RE.match(target):
                raise BadInputError(
                    f"policy target: expected a key id for scope 'key', seen {str(target)[:40]!r}"
                )
            return "key", target
        raise BadInputError(f"policy scope: expected tenant, repository or key, seen {str(scope)[:20]!r}")

    def change_refvalues(
        self, principal: Principal, body: Mapping[str, Any], *, remove: bool = False
    ) -> dict[str, Any]:
        tenant = principal.tenant_for(body.get("tenant"))
        principal.require("policy:write", tenant)
        name = body.get("name")
        if not isinstance(name, str) or not _REF_NAME_RE.match(name):
            raise BadInputError(
                f"reference values name: expected [A-Za-z0-9_.-]{{1,64}}, seen {str(name)[:40]!r}"
            )
        values = body.get("values")
        if not isinstance(values, list) or not values or len(values) > 1000:
            raise BadInputError("reference values: expected 'values', an array of 1-1000 strings")
        if not all(isinstance(v, str) and 0 < len(v) <= 255 for v in values):
            raise BadInputError("reference values: expected strings of 1-255 characters")
        if remove:
            changed = self.store.remove_refvalues(tenant, name, values)
        else:
            admin.check_refvalues_for(self, tenant, name, values)
            changed = self.store.add_refvalues(tenant, name, values)
        self._audit(
            "refvalues-remove" if remove else "refvalues-add",
            "ok",
            tenant=tenant,
            actor=self._who(principal),
            reason=f"{name}: {changed} changed",
        )
        return {"tenant": tenant, "name": name, "changed": changed}

    def list_refvalues(self, principal: Principal, tenant: Any = None) -> dict[str, dict[str, list[str]]]:
        chosen = None if tenant is None and principal.is_admin else principal.tenant_for(tenant)
        if "policy:read" not in principal.scopes:
            principal.require("policy:write", chosen)
        return self.store.list_refvalues(chosen)

    # ------------------------------------------------------------------ platforms

    def register_platform(
        self, principal: Principal | None, tee: Any, certificate: bytes, description: str = ""
    ) -> str:
        if principal is not None:
            principal.require("admin")
        if tee != "sim":
            raise BadInputError(
                f"platform tee: expected 'sim' (only sim has platform certificates), seen {str(tee)[:20]!r}"
            )
        der = load_certificate(certificate)
        fingerprint = certificate_fingerprint(der)
        self.store.put_platform(PlatformRow(fingerprint, "sim", der, description[:200], self.clock()))
        self._audit("platform-register", "ok", actor=self._who(principal), reason=fingerprint)
        return fingerprint

    def list_platforms(self, principal: Principal) -> list[dict[str, Any]]:
        principal.require("admin")
        return [
            {
                "fingerprint": p.fingerprint,
                "tee": p.tee,
                "description": p.description,
                "created_at": p.created_at,
            }
            for p in self.store.list_platforms()
        ]

    def delete_platform(self, principal: Principal, fingerprint: str) -> None:
        principal.require("admin")
        if not self.store.delete_platform(fingerprint):
            raise NotFoundError(f"platform {fingerprint[:80]!r}: expected to be registered, seen none")
        self._audit("platform-delete", "ok", actor=self._who(principal), reason=fingerprint)

    # ------------------------------------------------------------------ audit

    def audit_entries(
        self, principal: Principal, tenant: Any = None, after: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        chosen = None if tenant is None and principal.is_admin else principal.tenant_for(tenant)
        principal.require("audit:read", chosen)
        rows = self.store.iter_audit(tenant=chosen, after=after, limit=max(1, min(limit, 10000)))
        return [
            dict(r.content, chain=r.chain, id=r.id, prev_hash=r.prev_hash, row_hash=r.row_hash) for r in rows
        ]

    def _audit_entry(
        self,
        action: str,
        decision: str,
        *,
        tenant: str | None = None,
        keys: Sequence[str] = (),
        actor: str = "",
        evidence_digest: str | None = None,
        measurement: str | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        return {
            "at_ms": int(self.clock() * 1000),
            "actor": actor[:200],
            "action": action,
            "decision": decision,
            "tenant": tenant,
            "keys": keys_json(keys),
            "evidence_digest": evidence_digest,
            "measurement": measurement,
            "reason": reason[:2000],
        }

    def _notify(self, entry: Mapping[str, Any], n_keys: int) -> None:
        for listener in self.listeners:
            listener(entry["action"], entry["decision"], n_keys)

    def _audit(self, action: str, decision: str, **fields: Any) -> None:
        """Append an audit row (fields as for :meth:`_audit_entry`) and wait until it is committed."""
        entry = self._audit_entry(action, decision, **fields)
        self.audit_log.append(entry)
        self._notify(entry, len(fields.get("keys", ())))

    def ping(self) -> None:
        """One round trip to the database (readiness); raises what the driver raises."""
        with self.store.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        """Stop accepting audit rows (queued ones are still committed)."""
        self.audit_log.close()
        self.policy_runner.close()
        if self._reads_off_loop is not None:
            self._reads_off_loop.shutdown(wait=False)

    # ================================================================== RCAR

    def auth(self, client: str, body: Mapping[str, Any]) -> Challenge:
        """Step 1: a single-use nonce, bound with the TEE kind and expiry into the session cookie."""
        version = body.get("version")
        if not isinstance(version, str) or not version.startswith("0."):
            raise BadInputError(
                f"KBS request version: expected '{PROTOCOL_VERSION}', seen {str(version)[:20]!r}"
            )
        tee = body.get("tee")
        if tee not in SUPPORTED_TEES:
            raise BadInputError(
                f"KBS request tee: expected one of {list(SUPPORTED_TEES)}, seen {str(tee)[:30]!r}"
            )
        self._check_tee_allowed(str(tee))
        # nothing is stored until the nonce is used: the challenge is MAC'd into the cookie,
        # so unauthenticated clients cannot fill the session table (stateless challenges)
        expires = int(self.clock() + self.config.session_ttl)
        nonce = os.urandom(32)
        token = f"{tee}.{expires}.{_b64url(nonce)}"
        token += "." + _b64url(self._challenge_mac(token))
        return Challenge(token, base64.b64encode(nonce).decode(), float(expires))

    def _challenge_mac(self, text: str) -> bytes:
        return hmac.new(self._challenge_key, text.encode(), hashlib.sha256).digest()[:20]

    def _open_challenge(self, cookie: str, now: float) -> OpenChallenge:
        """The challenge a ``kbs-session-id`` cookie carries, if this broker made it and it is live."""
        parts = cookie.split(".") if len(cookie) <= 200 else []
        if len(parts) != 4 or not parts[1].isdigit():
            raise UnauthenticatedError(
                "attest: expected a kbs-session-id from /kbs/v0/auth, seen another value"
            )
        mac = self._challenge_mac(".".join(parts[:3]))
        if not hmac.compare_digest(_b64url(mac), parts[3]):
            raise UnauthenticatedError(
                "attest: expected a kbs-session-id made by this broker, seen a forged one"
            )
        expires = float(parts[1])
        if expires <= now:
            raise UnauthenticatedError(
                f"attest: expected a live session, seen one expired {int(now - expires)} s ago"
            )
        nonce = base64.b64encode(base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))).decode()
        return OpenChallenge(parts[0], nonce, expires)

    @staticmethod
    def session_key(cookie: str) -> str:
        """The session row of a ``kbs-session-id`` cookie (rows exist once a nonce is used)."""
        return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).hexdigest()

    def _check_tee_allowed(self, tee: str) -> None:
        if tee == "sample" and not self.config.allow_sample_tee:
            raise ForbiddenError(
                "KBS request tee: expected a TEE with signed evidence, seen 'sample' (unsigned; "
                "allowed only on a development broker started with --allow-sample-tee)"
            )

    def attest(
        self, session_id: str | None, body: Mapping[str, Any], client: str = ""
    ) -> tuple[str, float, Attested]:
        """Step 2: verify evidence bound to the nonce and tee-pubkey; returns (JWT, exp, result)."""
        if not session_id:
            raise UnauthenticatedError(
                "attest: expected cookie 'kbs-session-id' from /kbs/v0/auth, seen none"
            )
        runtime = body.get("runtime-data")
        if not isinstance(runtime, dict):
            raise BadInputError(
                "attestation: field 'runtime-data': expected an object with 'nonce' and 'tee-pubkey'"
            )
        nonce = runtime.get("nonce")
        tee_pubkey = runtime.get("tee-pubkey")
        if not isinstance(nonce, str) or not isinstance(tee_pubkey, dict):
            raise BadInputError(
                "attestation runtime-data: expected 'nonce' (string) and 'tee-pubkey' (JWK object)"
            )
        public_key_from_jwk(tee_pubkey, "attestation tee-pubkey")
        evidence_field = body.get("tee-evidence")
        additional = ""
        if isinstance(evidence_field, dict) and "primary_evidence" in evidence_field:
            primary = evidence_field["primary_evidence"]
            additional_value = evidence_field.get("additional_evidence", "")
            if not isinstance(additional_value, str):
                raise BadInputError("attestation tee-evidence.additional_evidence: expected a string")
            additional = additional_value
        else:
            primary = evidence_field
        if isinstance(primary, str):
            # a lone surrogate passes as invalid UTF-8, for the verifier to refuse and audit
            evidence = primary.encode("utf-8", "surrogatepass")
        elif isinstance(primary, dict):
            evidence = json.dumps(primary, separators=(",", ":")).encode()
        else:
            raise BadInputError("attestation: field 'tee-evidence': expected an object or string")
        now = self.clock()
        session = self._open_challenge(session_id, now)
        self._check_tee_allowed(session.tee)
        session_id = self.session_key(session_id)
        self._attest_count += 1
        if self._attest_count % 256 == 0:
            self.store.purge_expired(now)
        # the row is the nonce's "used" mark: a second attempt with it finds the row
        if not self.store.claim_session(
            session_id, client[:64], session.tee, session.nonce, session.expires_at
        ):
            raise UnauthenticatedError("attest: expected a fresh nonce, seen one already used (nonce used)")
        evidence_digest = hashlib.sha256(evidence).hexdigest()
        try:
            if not secrets.compare_digest(nonce.encode(), session.nonce.encode()):
                raise DeniedError("attestation nonce: expected the nonce of this session, seen another")
            claims = rcar.verify(
                session.tee,
                evidence,
                nonce=nonce,
                tee_pubkey=tee_pubkey,
                additional_evidence=additional,
                init_data=body.get("init-data"),
                verifier_for=lambda tee: _Guarded(
                    self.verifiers.verifier_for(
                        tee, [p.certificate for p in self.store.list_platforms("sim")] if tee == "sim" else []
                    )
                ),
            )
        except LayersealError as exc:
            self.store.finish_session(session_id, "failed", evidence_digest=evidence_digest)
            self._audit(
                "attest", "deny", actor=f"client:{client}", evidence_digest=evidence_digest, reason=str(exc)
            )
            raise
        tree = claims.as_tree()
        platform = claims.details.get("platform")
        self.store.record_claims(
            evidence_digest,
            claims.tee,
            platform[:80] if isinstance(platform, str) else None,
            json.dumps(tree),
        )
        token, jti, exp = self.signer.issue(
            {"sid": session_id, "tee-pubkey": tee_pubkey, "tcb": tree, "evidence_digest": evidence_digest},
            self.config.token_ttl,
            now,
        )
        # the session may never outlive its token (Trustee #560)
        self.store.finish_session(
            session_id,
            "attested",
            token_jti=jti,
            claims=json.dumps(tree),
            tee_pubkey=json.dumps(tee_pubkey),
            evidence_digest=evidence_digest,
            expires_at=min(session.expires_at, exp),
        )
        self._audit(
            "attest",
            "ok",
            actor=f"client:{client}",
            evidence_digest=evidence_digest,
            measurement=claims.measurement,
            reason=f"tee {claims.tee} svn {claims.svn} debug {claims.debug}",
        )
        return token, exp, Attested(tree, tee_pubkey, jti, evidence_digest, f"session:{session_id[:8]}")

    def _verify_token(self, authorization: str, now: float) -> tuple[dict[str, Any], str]:
        """The claims of a valid bearer token and their digest (revocation not checked here)."""
        if not authorization.startswith("Bearer "):
            raise UnauthenticatedError("resource: expected 'Authorization: Bearer <attestation token>'")
        token = authorization[7:].strip()
        # a verified token is a pure function of its bytes and our key; only exp changes its meaning
        with self._lock:
            hit = self._tokens.get(token)
        if hit is None:
            claims = self.signer.verify(token, now)
            if not isinstance(claims.get("tcb"), dict) or not isinstance(claims.get("tee-pubkey"), dict):
                raise UnauthenticatedError("attestation token: expected 'tcb' and 'tee-pubkey' claims")
            hit = (claims, _claims_digest(claims["tcb"]))
            with self._lock:
                self._tokens[token] = hit
                if len(self._tokens) > 4096:
                    self._tokens.popitem(last=False)
        elif float(hit[0]["exp"]) <= now:
            raise UnauthenticatedError(
                f"attestation token: expected unexpired, seen expired {int(now - float(hit[0]['exp']))} s ago"
            )
        return hit

    @staticmethod
    def _attested_from_token(claims: Mapping[str, Any], revoked: bool, claims_digest: str = "") -> Attested:
        jti = str(claims["jti"])
        if revoked:
            raise UnauthenticatedError(f"attestation token {jti[:8]}: expected unrevoked, seen revoked")
        return Attested(
            claims["tcb"],
            claims["tee-pubkey"],
            jti,
            str(claims.get("evidence_digest", "")),
            f"token:{jti[:8]}",
            claims_digest,
        )

    @staticmethod
    def _attested_from_session(session: SessionRow | None, session_id: str, now: float) -> Attested:
        if session is None or session.expires_at <= now:
            raise UnauthenticatedError(
                "resource: expected a live session, seen an unknown or expired kbs-session-id"
            )
        if session.state != "attested" or session.claims is None or session.tee_pubkey is None:
            raise UnauthenticatedError(
                f"resource: expected an attested session, seen state {session.state!r}"
            )
        return Attested(
            json.loads(session.claims),
            json.loads(session.tee_pubkey),
            session.token_jti or "",
            session.evidence_digest or "",
            f"session:{session_id[:8]}",
        )

    def resolve(self, session_id: str | None, authorization: str | None) -> Attested:
        """The attestation a resource request rides on: bearer token first, else the cookie."""
        now = self.clock()
        if authorization:
            claims, digest = self._verify_token(authorization, now)
            return self._attested_from_token(claims, self.store.is_revoked(str(claims["jti"])), digest)
        if not session_id:
            raise UnauthenticatedError(
                "resource: expected an attested kbs-session-id cookie or a bearer token, seen neither"
            )
        key = self.session_key(session_id)
        return self._attested_from_session(self.store.get_session(key), key, now)

    def revoke_attestation(self, principal: Principal, token: str | None, jti: str | None) -> str:
        principal.require("admin")
        exp = self.clock() + self.config.token_ttl
        if token:
            claims = self.signer.verify(token, self.clock())
            jti, exp = str(claims["jti"]), float(claims["exp"])
        if not jti or not isinstance(jti, str) or len(jti) > 64:
            raise BadInputError("revoke attestation: expected 'token' or 'jti'")
        self.store.revoke_jti(jti, exp)
        self._audit("token-revoke", "ok", actor=self._who(principal), reason=f"attestation token {jti[:8]}")
        return jti

    # ------------------------------------------------------------------ release

    def _cached_decision(
        self, pol: policy.Policy, claims_digest: str, rules: TenantRules
    ) -> policy.Decision | None:
        # a decision is a pure function of the policy, the claims and the tenant's reference
        # values; the memo lives (and dies) with the cached rules of one generation
        hit: policy.Decision | None = rules.memo.get((pol.digest, claims_digest))
        return hit

    @staticmethod
    def _remember(
        pol: policy.Policy, claims_digest: str, rules: TenantRules, decision: policy.Decision
    ) -> None:
        if len(rules.memo) >= 4096:
            rules.memo.clear()
        rules.memo[(pol.digest, claims_digest)] = decision

    def _policy(self, document: str) -> policy.Policy:
        pol = self._policies.get(document)
        if pol is None:
            try:
                pol = policy.Policy.parse(document)
            except BadInputError as exc:
                # stored before a stricter check (e.g. the cost budget): it releases nothing
                pol = policy.refusing_policy(document, str(exc))
            with self._lock:
                if len(self._policies) > 1024:
                    self._policies.clear()
                self._policies[document] = pol
        return pol

    def _parse_paths(self, resources: Any) -> list[packets.ResourcePath]:
        if not isinstance(resources, list | tuple) or not resources:
            raise BadInputError("resources: expected at least one resource path, seen none")
        if len(resources) > self.config.max_batch:
            raise BadInputError(
                f"resources: expected at most {self.config.max_batch} paths, seen {len(resources)}"
            )
        return [packets.ResourcePath.parse(r) for r in resources]

    def _read_request(
        self, session_id: str | None, authorization: str | None, resources: Any
    ) -> tuple[Attested, list[packets.ResourcePath], ReleaseSnapshot]:
        """Authenticate (token or cookie) and read what a release decides on, in one read.

        Authentication failures raise (they are not audited); release decisions, allow or
        deny, come back from ``_judge`` with their audit row.
        """
        now = self.clock()
        verified = self._verify_token(authorization, now) if authorization else None
        if verified is None and not session_id:
            raise UnauthenticatedError(
                "resource: expected an attested kbs-session-id cookie or a bearer token, seen neither"
            )
        paths = self._parse_paths(resources)
        snap = self.store.release_snapshot(
            [p.key_id for p in paths],
            jti=None if verified is None else str(verified[0]["jti"]),
            session_id=None if verified is not None or session_id is None else self.session_key(session_id),
        )
        if verified is not None:
            attested = self._attested_from_token(verified[0], snap.revoked, verified[1])
        else:
            assert session_id is not None
            attested = self._attested_from_session(snap.session, self.session_key(session_id), now)
        return attested, paths, snap

    def release_request(
        self, session_id: str | None, authorization: str | None, resources: Any
    ) -> tuple[Attested, dict[str, bytes]]:
        """Authenticate and release (all or nothing); returns once the audit row is committed.

        Policies are evaluated on the calling thread (tools and tests; the HTTP app uses
        :meth:`release_request_async`).
        """
        attested, paths, snap = self._read_request(session_id, authorization, resources)
        outcome = self._judge(attested, paths, snap)
        assert isinstance(outcome, _Outcome)
        self.audit_log.append(outcome.entry)
        self._notify(outcome.entry, outcome.n_keys)
        return outcome.result()

    async def release_request_async(
        self, session_id: str | None, authorization: str | None, resources: Any
    ) -> tuple[Attested, dict[str, bytes]]:
        """``release_request`` for the event loop: policy evaluations the memo does not hold
        run on the policy threads (never on the loop), and the wait for the audit commit
        yields, so concurrent requests share one audit transaction."""
        if self._reads_off_loop is not None:
            # a server database: the loop would sit blocked in the round trip (a third of a
            # worker's time under load, profiled); a thread waits instead, the GIL released
            loop = asyncio.get_running_loop()
            attested, paths, snap = await loop.run_in_executor(
                self._reads_off_loop, self._read_request, session_id, authorization, resources
            )
        else:
            attested, paths, snap = self._read_request(session_id, authorization, resources)
        outcome = self._judge(attested, paths, snap, evaluate=False)
        if isinstance(outcome, _Pending):
            decided, finished = await self.policy_runner.decide(outcome.work, attested.claims)
            digest = attested.digest()
            for key in finished:
                pol, rules = outcome.work[key]
                self._remember(pol, digest, rules, decided[key])
            outcome = self._judge(attested, paths, snap, decided=decided)
            assert isinstance(outcome, _Outcome)
        await self.audit_log.append_async(outcome.entry)
        self._notify(outcome.entry, outcome.n_keys)
        return outcome.result()

    def release(self, attested: Attested, resources: Sequence[Any]) -> dict[str, bytes]:
        """KEKs for *resources* (all or nothing), each allowed by its key's policy."""
        paths = self._parse_paths(list(resources))
        outcome = self._judge(attested, paths, self.store.release_snapshot([p.key_id for p in paths]))
        assert isinstance(outcome, _Outcome)
        self.audit_log.append(outcome.entry)
        self._notify(outcome.entry, outcome.n_keys)
        return outcome.result()[1]

    def _judge(
        self,
        attested: Attested,
        paths: list[packets.ResourcePath],
        snap: ReleaseSnapshot,
        *,
        evaluate: bool = True,
        decided: Mapping[tuple[str, str], policy.Decision] | None = None,
    ) -> _Outcome | _Pending:
        """The outcome of a release, or (``evaluate=False``) the policy evaluations it waits on.

        *decided* holds decisions made elsewhere, keyed by (policy digest, tenant).
        """
        names = [str(p) for p in paths]
        claims = attested.claims
        measurement = str(claims.get("measurement", ""))
        tenants = {p.tenant for p in paths}
        audit_tenant = next(iter(tenants)) if len(tenants) == 1 else None

        def deny(exc: LayersealError, audit_reason: str | None = None) -> _Outcome:
            entry = self._audit_entry(
                "release",
                "deny",
                tenant=audit_tenant,
                keys=names,
                actor=attested.subject,
                evidence_digest=attested.evidence_digest,
                measurement=measurement,
                reason=audit_reason or str(exc),
            )
            return _Outcome(attested, None, exc, entry, len(names))

        rows = snap.keys
        chosen: list[tuple[packets.ResourcePath, KeyRow, int, bytes]] = []
        for p in paths:
            row = rows.get(p.key_id)
            if row is None or row.tenant != p.tenant:
                return deny(NotFoundError(f"resource {p}: expected a key of tenant {p.tenant!r}, seen none"))
            if row.revoked_at is not None:
                return deny(ForbiddenError(f"resource {p}: expected an unrevoked key, seen revoked"))
            if p.version is None:
                active = [v for v in row.versions if v.status == "active"]
                if not active:
                    return deny(ForbiddenError(f"resource {p}: expected an active version, seen none"))
                ver = active[-1]
            else:
                found = next((v for v in row.versions if v.version == p.version), None)
                if found is None:
                    return deny(
                        NotFoundError(f"resource {p}: expected version {p.version} to exist, seen none")
                    )
                ver = found
            if ver.status != "active":
                return deny(
                    ForbiddenError(f"resource {p}: expected an active key version, seen {ver.status}")
                )
            chosen.append((p, row, ver.version, ver.sealed_kek))
        digest = attested.digest()
        judged: list[tuple[packets.ResourcePath, str | None, policy.Decision]] = []
        pending: dict[tuple[str, str], tuple[policy.Policy, TenantRules]] = {}
        for p, row, _version, _sealed in chosen:
            rules = snap.rules[row.tenant]
            doc = (
                rules.policies.get(("key", row.key_id))
                or rules.policies.get(("repository", row.repository))
                or rules.policies.get(("tenant", ""))
            )
            pol = policy.DEFAULT_POLICY if doc is None else self._policy(doc)
            decision = self._cached_decision(pol, digest, rules)
            if decision is None and decided is not None:
                decision = decided.get((pol.digest, row.tenant))
            if decision is None:
                if not evaluate:
                    pending[(pol.digest, row.tenant)] = (pol, rules)
                    continue
                decision = policy.evaluate(pol, claims, rules.refvalues)
                self._remember(pol, digest, rules, decision)
            judged.append((p, doc, decision))
        if pending:
            return _Pending(pending)
        for p, doc, decision in judged:
            if not decision.allowed:
                source = "default policy" if doc is None else "policy"
                # the client learns which condition failed, not the policy's contents (operands
                # such as measurement lists) nor the observed values: those go to the audit log
                failed = ", ".join(decision.conditions) or "no condition holds"
                return deny(
                    PolicyDeniedError(f"resource {p}: {source} denied release: failed {failed}"),
                    f"resource {p}: {source} denied release: {decision.reason}",
                )
        keks = {
            str(p): self.custody.unseal(sealed, record_aad("kek", row.key_id, version))
            for p, row, version, sealed in chosen
        }
        entry = self._audit_entry(
            "release",
            "ok",
            tenant=audit_tenant,
            keys=[f"{p.tenant}/{p.key_id}.{v}" for p, _r, v, _s in chosen],
            actor=attested.subject,
            evidence_digest=attested.evidence_digest,
            measurement=measurement,
            reason="policy allowed",
        )
        return _Outcome(attested, keks, None, entry, len(chosen))

    @staticmethod
    def seal_response(attested: Attested, payload: bytes) -> dict[str, Any]:
        """The KBS response: a flattened JWE of *payload* to the attested tee-pubkey."""
        return jwe.encrypt_to_jwk(payload, attested.tee_pubkey)


@dataclass(frozen=True)
class _Guarded:
    """A verifier whose unanticipated exceptions refuse the evidence (see :func:`_verified`)."""

    inner: Verifier

    @property
    def tee(self) -> str:
        return self.inner.tee

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        return _verified(self.inner, self.inner.tee, evidence, expected_report_data)


def _verified(verifier: Verifier, tee: str, evidence: bytes, expected: bytes) -> Claims:
    """The verifier's claims; an exception no check anticipated refuses the evidence too.

    Verifiers are pure functions of the evidence, so evidence one fails on is malformed:
    the fault is logged for us, the client and the audit log get a refusal naming the TEE.
    """
    try:
        return verifier.verify(evidence, expected)
    except LayersealError:
        raise
    except Exception as exc:
        log.error("verifier failed", exc_info=exc, extra={"fields": {"tee": tee}})
        raise BadInputError(
            f"{tee} evidence: expected evidence the verifier can check, "
            f"seen evidence it failed on ({type(exc).__name__})"
        ) from exc


def batch_payload(keks: Mapping[str, bytes]) -> bytes:
    """The plaintext of a batch release: ``{"resources": {path: b64(KEK)}}``."""
    return json.dumps(
        {"resources": {path: base64.b64encode(k).decode() for path, k in keks.items()}}, separators=(",", ":")
    ).encode()


__all__ = [
    "Attested",
    "Broker",
    "BrokerConfig",
    "Challenge",
    "Claims",
    "KeyInfo",
    "Principal",
    "batch_payload",
]
