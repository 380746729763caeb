"""Key release: authenticate a resource request, judge it by each key's policy, audit it.

A release is all or nothing.  Its audit row, allow or deny, is committed before the keys
(or the refusal) leave: :class:`Releases` builds an ``_Outcome`` holding both.  Decisions
are cached per policy, claims and tenant rules generation (see ``TenantRules.memo``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from layerseal.broker import policy
from layerseal.broker.custody import record_aad
from layerseal.broker.requests import parse_paths
from layerseal.broker.service.attestation import Attestation
from layerseal.broker.service.common import Attested, Context, Part
from layerseal.broker.service.evaluation import PolicyRunner
from layerseal.broker.store import KeyRow, ReleaseSnapshot, TenantRules
from layerseal.crypto import jwe
from layerseal.errors import BadInputError, LayersealError, NotFoundError
from layerseal.kbs import packets
from layerseal.kbs.problems import ForbiddenError, PolicyDeniedError, UnauthenticatedError

PolicyKey = tuple[str, str]  # (policy digest, tenant)


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


@dataclass
class _Pending:
    """A release waiting on policy evaluations: (policy digest, tenant) -> (policy, rules)."""

    work: dict[PolicyKey, tuple[policy.Policy, TenantRules]]


def _cached_decision(pol: policy.Policy, claims_digest: str, rules: TenantRules) -> policy.Decision | None:
    # a decision is a pure function of the policy, the claims and the tenant's reference
    # values; the memo lives (and dies) with the cached rules of one generation
    hit: policy.Decision | None = rules.memo.get((pol.digest, claims_digest))
    return hit


def _remember(pol: policy.Policy, claims_digest: str, rules: TenantRules, decision: policy.Decision) -> None:
    if len(rules.memo) >= 4096:
        rules.memo.clear()
    rules.memo[(pol.digest, claims_digest)] = decision


def _key_version(p: packets.ResourcePath, row: KeyRow | None) -> tuple[KeyRow, int, bytes]:
    """The key version *p* names (its newest active one by default), or the refusal to raise."""
    if row is None or row.tenant != p.tenant:
        raise NotFoundError(f"resource {p}: expected a key of tenant {p.tenant!r}, seen none")
    if row.revoked_at is not None:
        raise ForbiddenError(f"resource {p}: expected an unrevoked key, seen revoked")
    if p.version is None:
        active = [v for v in row.versions if v.status == "active"]
        if not active:
            raise ForbiddenError(f"resource {p}: expected an active version, seen none")
        ver = active[-1]
    else:
        found = next((v for v in row.versions if v.version == p.version), None)
        if found is None:
            raise NotFoundError(f"resource {p}: expected version {p.version} to exist, seen none")
        ver = found
    if ver.status != "active":
        raise ForbiddenError(f"resource {p}: expected an active key version, seen {ver.status}")
    return row, ver.version, ver.sealed_kek


class Releases(Part):
    """Releases of KEKs to attested TEEs."""

    def __init__(self, ctx: Context, attestation: Attestation, policy_runner: PolicyRunner) -> None:
        super().__init__(ctx)
        self.attestation = attestation
        self.policy_runner = policy_runner
        self._policies: dict[str, policy.Policy] = {}
        self._lock = threading.Lock()
        # SQLite reads take microseconds in-process: a thread hop would cost more than it saves
        self._reads_off_loop = (
            None
            if ctx.store.engine.dialect.name == "sqlite"
            else ThreadPoolExecutor(8, thread_name_prefix="layerseal-read")
        )

    def close(self) -> None:
        if self._reads_off_loop is not None:
            self._reads_off_loop.shutdown(wait=False)

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

    def _read_request(
        self, session_id: str | None, authorization: str | None, resources: Any
    ) -> tuple[Attested, list[packets.ResourcePath], ReleaseSnapshot]:
        """Authenticate (token or cookie) and read what a release decides on, in one read.

        Authentication failures raise (they are not audited); release decisions, allow or
        deny, come back from ``_judge`` with their audit row.
        """
        now = self.clock()
        att = self.attestation
        verified = att.verify_token(authorization, now) if authorization else None
        if verified is None and not session_id:
            raise UnauthenticatedError(
                "resource: expected an attested kbs-session-id cookie or a bearer token, seen neither"
            )
        paths = parse_paths(resources, self.config.max_batch)
        snap = self.store.release_snapshot(
            [p.key_id for p in paths],
            jti=None if verified is None else str(verified[0]["jti"]),
            session_id=None if verified is not None or session_id is None else att.session_key(session_id),
        )
        if verified is not None:
            attested = att.from_token(verified[0], snap.revoked, verified[1])
        else:
            assert session_id is not None
            attested = att.from_session(snap.session, att.session_key(session_id), now)
        return attested, paths, snap

    def release_request(
        self, session_id: str | None, authorization: str | None, resources: Any
    ) -> tuple[Attested, dict[str, bytes]]:
        """Authenticate and release (all or nothing); returns once the audit row is committed.

        Policies are evaluated on the calling thread (tools and tests; the HTTP app uses
        :meth:`release_request_async`).
        """
        attested, paths, snap = self._read_request(session_id, authorization, resources)
        return self._commit(self._judge(attested, paths, snap))

    async def release_request_async(
        self, session_id: str | None, authorization: str | None, resources: Any
    ) -> tuple[Attested, dict[str, bytes]]:
        """``release_request`` for the event loop: policy evaluations the memo does not hold
        run in the evaluation processes (never on the loop), and the wait for the audit
        commit yields, so concurrent requests share one audit transaction."""
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
                _remember(pol, digest, rules, decided[key])
            outcome = self._judge(attested, paths, snap, decided=decided)
        assert isinstance(outcome, _Outcome)
        await self.audit.commit_async(outcome.entry, outcome.n_keys)
        return outcome.result()

    def release(self, attested: Attested, resources: Sequence[Any]) -> dict[str, bytes]:
        """KEKs for *resources* (all or nothing), each allowed by its key's policy."""
        paths = parse_paths(list(resources), self.config.max_batch)
        snap = self.store.release_snapshot([p.key_id for p in paths])
        return self._commit(self._judge(attested, paths, snap))[1]

    def _commit(self, outcome: _Outcome | _Pending) -> tuple[Attested, dict[str, bytes]]:
        assert isinstance(outcome, _Outcome)
        self.audit.commit(outcome.entry, outcome.n_keys)
        return outcome.result()

    def _judge(
        self,
        attested: Attested,
        paths: list[packets.ResourcePath],
        snap: ReleaseSnapshot,
        *,
        evaluate: bool = True,
        decided: Mapping[PolicyKey, policy.Decision] | None = None,
    ) -> _Outcome | _Pending:
        """The outcome of a release, or (``evaluate=False``) the policy evaluations it waits on.

        *decided* holds decisions made elsewhere, keyed by (policy digest, tenant).
        """
        claims = attested.claims
        measurement = str(claims.get("measurement", ""))
        tenants = {p.tenant for p in paths}
        audit_tenant = next(iter(tenants)) if len(tenants) == 1 else None

        def outcome(
            decision: str,
            keys: list[str],
            reason: str,
            keks: dict[str, bytes] | None,
            error: LayersealError | None,
        ) -> _Outcome:
            entry = self.audit.entry(
                "release",
                decision,
                tenant=audit_tenant,
                keys=keys,
                actor=attested.subject,
                evidence_digest=attested.evidence_digest,
                measurement=measurement,
                reason=reason,
            )
            return _Outcome(attested, keks, error, entry, len(keys))

        names = [str(p) for p in paths]
        chosen: list[tuple[packets.ResourcePath, KeyRow, int, bytes]] = []
        for p in paths:
            try:
                chosen.append((p, *_key_version(p, snap.keys.get(p.key_id))))
            except LayersealError as exc:
                return outcome("deny", names, str(exc), None, exc)
        digest = attested.digest()
        judged: list[tuple[packets.ResourcePath, str | None, policy.Decision]] = []
        pending: dict[PolicyKey, tuple[policy.Policy, TenantRules]] = {}
        for p, row, _version, _sealed in chosen:
            rules = snap.rules[row.tenant]
            doc = (
                rules.policies.get(("key", row.key_id))
                or rules.policies.get(("repository", row.repository))
                or rules.policies.get(("tenant", ""))
            )
            pol = policy.DEFAULT_POLICY if doc is None else self._policy(doc)
            decision = _cached_decision(pol, digest, rules)
            if decision is None and decided is not None:
                decision = decided.get((pol.digest, row.tenant))
            if decision is None:
                if not evaluate:
                    pending[(pol.digest, row.tenant)] = (pol, rules)
                    continue
                decision = policy.evaluate(pol, claims, rules.refvalues)
                _remember(pol, digest, rules, decision)
            judged.append((p, doc, decision))
        if pending:
            return _Pending(pending)
        for p, doc, decision in judged:
            if not decision.allowed:
                source = "default policy" if doc is None else "policy"
                # the client learns which condition failed, not the policy's contents (operands
                # such as measurement lists) nor the observed values: those go to the audit log
                failed = ", ".join(decision.conditions) or "no condition holds"
                refusal = PolicyDeniedError(f"resource {p}: {source} denied release: failed {failed}")
                return outcome(
                    "deny", names, f"resource {p}: {source} denied release: {decision.reason}", None, refusal
                )
        keks = {
            str(p): self.custody.unseal(sealed, record_aad("kek", row.key_id, version))
            for p, row, version, sealed in chosen
        }
        released = [f"{p.tenant}/{p.key_id}.{v}" for p, _r, v, _s in chosen]
        return outcome("ok", released, "policy allowed", keks, None)


def seal_response(attested: Attested, payload: bytes) -> dict[str, Any]:
    """The KBS response: a flattened JWE of *payload* to the attested tee-pubkey."""
    return jwe.encrypt_to_jwk(payload, attested.tee_pubkey)


def batch_payload(keks: Mapping[str, bytes]) -> bytes:
    """The plaintext of a batch release: ``{"resources": {path: b64(KEK)}}``."""
    return json.dumps(
        {"resources": {path: base64.b64encode(k).decode() for path, k in keks.items()}}, separators=(",", ":")
    ).encode()
