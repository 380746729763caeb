"""Release rules and trust administration: policies, reference values and sim platforms."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from layerseal.attest.x509util import certificate_fingerprint
from layerseal.broker import admin
from layerseal.broker.requests import PlatformRequest, PolicyRequest, RefValuesRequest, policy_target
from layerseal.broker.service.common import Part, Principal, actor_of
from layerseal.broker.store import PlatformRow
from layerseal.errors import NotFoundError


class PolicyAdmin(Part):
    """Who may release what: policies and reference values per tenant, trusted platforms."""

    @staticmethod
    def _reading(principal: Principal, tenant: Any) -> str | None:
        # policy:write implies reading what it writes
        return principal.reading(
            tenant, "policy:read" if "policy:read" in principal.scopes else "policy:write"
        )

    def set_policy(self, principal: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        tenant = principal.tenant_for(body.get("tenant"))
        principal.require("policy:write", tenant)
        request = PolicyRequest.from_json(body)
        parsed, scope, target = request.policy, request.scope, request.target
        admin.check_policy_for(self.store, tenant, parsed)
        self.store.put_policy(tenant, scope, target, json.dumps(parsed.document, sort_keys=True))
        self.audit.record(
            "policy-set",
            "ok",
            tenant=tenant,
            actor=principal.actor,
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
        s, tg = policy_target(scope or "tenant", target)
        if not self.store.delete_policy(t, s, tg):
            raise NotFoundError(f"policy {t}/{s}/{tg}: expected to exist, seen none")
        self.audit.record("policy-delete", "ok", tenant=t, actor=principal.actor, reason=f"{s} {tg}")

    def list_policies(self, principal: Principal, tenant: Any = None) -> list[dict[str, Any]]:
        return [
            {
                "tenant": r.tenant,
                "scope": r.scope,
                "target": r.target,
                "policy": json.loads(r.document),
                "updated_at": r.updated_at,
            }
            for r in self.store.list_policies(self._reading(principal, tenant))
        ]

    def change_refvalues(
        self, principal: Principal, body: Mapping[str, Any], *, remove: bool = False
    ) -> dict[str, Any]:
        tenant = principal.tenant_for(body.get("tenant"))
        principal.require("policy:write", tenant)
        request = RefValuesRequest.from_json(body)
        name, values = request.name, request.values
        if remove:
            changed = self.store.remove_refvalues(tenant, name, values)
        else:
            admin.check_refvalues_for(self.store, tenant, name, values)
            changed = self.store.add_refvalues(tenant, name, values)
        self.audit.record(
            "refvalues-remove" if remove else "refvalues-add",
            "ok",
            tenant=tenant,
            actor=principal.actor,
            reason=f"{name}: {changed} changed",
        )
        return {"tenant": tenant, "name": name, "changed": changed}

    def list_refvalues(self, principal: Principal, tenant: Any = None) -> dict[str, dict[str, list[str]]]:
        return self.store.list_refvalues(self._reading(principal, tenant))

    def register_platform(self, principal: Principal | None, request: PlatformRequest) -> str:
        if principal is not None:
            principal.require("admin")
        tee, der = request.certificate()
        fingerprint = certificate_fingerprint(der)
        self.store.put_platform(PlatformRow(fingerprint, tee, der, request.description, self.clock()))
        self.audit.record("platform-register", "ok", actor=actor_of(principal), reason=fingerprint)
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
        self.audit.record("platform-delete", "ok", actor=principal.actor, reason=fingerprint)
