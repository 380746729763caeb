"""Publisher API tokens: authenticating a request, issuing, listing and revoking tokens."""

from __future__ import annotations

from typing import Any

from layerseal.broker import admin
from layerseal.broker.requests import ADMIN_TENANT, TokenRequest
from layerseal.broker.service.common import Part, Principal, actor_of, utc
from layerseal.broker.store import ApiTokenRow
from layerseal.broker.tokens import new_api_token, split_api_token, token_matches
from layerseal.errors import NotFoundError
from layerseal.kbs.problems import UnauthenticatedError


class ApiTokens(Part):
    """The API tokens publishers and admins authenticate with."""

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
                f"API token {token_id}: expected unexpired, seen expired at {utc(row.expires_at)}"
            )
        admin.check_token_use(self.store, row.token_id, self.clock())
        return Principal(row.token_id, row.tenant, row.scopes)

    def create(self, principal: Principal | None, request: TokenRequest) -> tuple[str, str, float | None]:
        """Issue a token (principal None = bootstrap); returns (token_id, token shown once, expiry).

        With neither ``expires_in`` nor ``expires_at`` the token works until revoked.
        """
        if principal is not None:
            principal.require("admin")
        now = self.clock()
        expires_at = request.expiry(now)
        scopes = request.grant()
        new = new_api_token()
        tenant = request.tenant
        self.store.insert_api_token(
            ApiTokenRow(
                new.token_id,
                tenant,
                scopes,
                new.token_hash,
                request.description,
                now,
                None,
                expires_at,
            )
        )
        self.audit.record(
            "token-create",
            "ok",
            tenant=None if tenant == ADMIN_TENANT else tenant,
            actor=actor_of(principal),
            reason=f"token {new.token_id} scopes {' '.join(scopes)}",
        )
        return new.token_id, new.token, expires_at

    def list(self, principal: Principal) -> list[dict[str, Any]]:
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

    def revoke(self, principal: Principal, token_id: str) -> None:
        principal.require("admin")
        if not self.store.revoke_api_token(token_id):
            raise NotFoundError(f"API token {token_id[:40]!r}: expected an active token, seen none")
        self.audit.record("token-revoke", "ok", actor=principal.actor, reason=f"token {token_id}")
