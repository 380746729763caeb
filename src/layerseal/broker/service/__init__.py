"""The broker's behaviour, independent of HTTP: publishers, RCAR attestation, key release.

``Broker`` composes one part per job and hands each the state it needs: API tokens
(:mod:`.apitokens`), layer keys (:mod:`.keys`), policies, reference values and platforms
(:mod:`.policyadmin`), RCAR attestation (:mod:`.attestation`) and key release
(:mod:`.release`, evaluating policies through :mod:`.evaluation`).  Every method takes
plain values or a request object of :mod:`layerseal.broker.requests` (JSON bodies are
parsed there), returns plain values and raises layerseal errors; the ASGI layer only
translates.  State lives in the ``Store``; in process there are only caches of pure
functions, the shared JWT key and the audit committer (a call returns, and an HTTP
response leaves, only once its audit row is committed; concurrent requests share commits).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from layerseal.attest.claims import Claims
from layerseal.attest.verifiers import TeeVerifiers
from layerseal.broker.auditlog import open_audit_committer
from layerseal.broker.custody import KeyCustody
from layerseal.broker.requests import (
    ADMIN_TENANT,
    AttestRequest,
    AuthRequest,
    PlatformRequest,
    RevokeAttestationRequest,
    TokenRequest,
    check_repository,
    coerce,
)
from layerseal.broker.service.apitokens import ApiTokens
from layerseal.broker.service.attestation import Attestation, Challenge, open_token_signer
from layerseal.broker.service.common import Attested, AuditTrail, BrokerConfig, Clock, Context, Principal
from layerseal.broker.service.evaluation import PolicyRunner, start_policy_processes
from layerseal.broker.service.keys import KeyInfo, LayerKeys
from layerseal.broker.service.policyadmin import PolicyAdmin
from layerseal.broker.service.release import Releases, batch_payload, seal_response
from layerseal.broker.store import Store

Body = Mapping[str, Any]


class Broker:
    """The key broker service: a facade over its parts (``tokens``, ``keys``, ``rules``,
    ``attestation``, ``releases``), which callers may also use directly."""

    def __init__(
        self,
        store: Store,
        custody: KeyCustody,
        config: BrokerConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
        verifiers: TeeVerifiers | None = None,
    ) -> None:
        self.store = store
        self.custody = custody
        self.config = config or BrokerConfig()
        self._clock = Clock() if clock is None else Clock(clock)
        # this broker's TEE verifiers over its trust material (no process-wide registry)
        self.verifiers = verifiers or TeeVerifiers()
        self.signer = open_token_signer(store, custody, self.config.issuer)
        self.audit = AuditTrail(store, open_audit_committer(store, custody), self._clock)
        self.audit_log = self.audit.committer
        self.listeners = self.audit.listeners  # (action, decision, keys) for metrics
        self.policy_runner = PolicyRunner()
        ctx = Context(store, custody, self.config, self._clock, self.audit)
        self.tokens = ApiTokens(ctx)
        self.keys = LayerKeys(ctx)
        self.rules = PolicyAdmin(ctx)
        self.attestation = Attestation(ctx, signer=self.signer, verifiers=self.verifiers)
        self.releases = Releases(ctx, self.attestation, self.policy_runner)
        # the parts' entry points, under the names callers have always used
        self.authenticate = self.tokens.authenticate
        self.list_api_tokens = self.tokens.list
        self.revoke_api_token = self.tokens.revoke
        self.create_layer_key = self.keys.create
        self.rotate_key = self.keys.rotate
        self.list_keys = self.keys.list
        self.get_key = self.keys.get
        self.set_version_status = self.keys.set_version_status
        self.revoke_key = self.keys.revoke
        self.mark_unused = self.keys.mark_unused
        self.delete_key = self.keys.delete
        self.set_policy = self.rules.set_policy
        self.change_refvalues = self.rules.change_refvalues
        self.delete_policy = self.rules.delete_policy
        self.list_policies = self.rules.list_policies
        self.list_refvalues = self.rules.list_refvalues
        self.list_platforms = self.rules.list_platforms
        self.delete_platform = self.rules.delete_platform
        self.release_request = self.releases.release_request
        self.release_request_async = self.releases.release_request_async

    @property
    def clock(self) -> Callable[[], float]:
        """The time source every part reads (assignable: tests move time forward)."""
        return self._clock.now

    @clock.setter
    def clock(self, now: Callable[[], float]) -> None:
        self._clock.now = now

    session_key = staticmethod(Attestation.session_key)
    seal_response = staticmethod(seal_response)

    # request bodies: a request object, or its JSON (parsed by layerseal.broker.requests)

    def create_api_token(
        self, principal: Principal | None, request: Body | TokenRequest
    ) -> tuple[str, str, float | None]:
        return self.tokens.create(principal, coerce(TokenRequest.from_json, request))

    def register_platform(self, principal: Principal | None, request: Body | PlatformRequest) -> str:
        return self.rules.register_platform(principal, coerce(PlatformRequest.from_json, request))

    def auth(self, client: str, request: Body | AuthRequest) -> Challenge:
        return self.attestation.auth(client, coerce(AuthRequest.from_json, request))

    def attest(
        self, session_id: str | None, request: Body | AttestRequest, client: str = ""
    ) -> tuple[str, float, Attested]:
        return self.attestation.attest(session_id, lambda: coerce(AttestRequest.from_json, request), client)

    def revoke_attestation(self, principal: Principal, request: Body | RevokeAttestationRequest) -> str:
        return self.attestation.revoke(principal, coerce(RevokeAttestationRequest.from_json, request))

    def ping(self) -> None:
        """One round trip to the database (readiness); raises what the driver raises."""
        with self.store.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        """Stop accepting audit rows (queued ones are still committed)."""
        self.audit_log.close()
        self.policy_runner.close()
        self.releases.close()


__all__ = [
    "ADMIN_TENANT",
    "Attested",
    "Broker",
    "BrokerConfig",
    "Challenge",
    "Claims",
    "KeyInfo",
    "PolicyRunner",
    "Principal",
    "batch_payload",
    "check_repository",
    "start_policy_processes",
]
