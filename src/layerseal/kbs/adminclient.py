"""The admin lifecycle calls of the publisher/admin API (the HTTP side of ``broker.admin``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from layerseal.kbs.client import PublisherClient


class AdminClient(PublisherClient):
    """``PublisherClient`` plus token expiry/get/delete and audit search."""

    def create_token_expiring(
        self, tenant: str, scopes: Sequence[str], *, description: str = "", expires_in: float | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"tenant": tenant, "scopes": list(scopes), "description": description}
        if expires_in is not None:
            body["expires_in"] = expires_in
        result: dict[str, Any] = self._call("POST", "/api/v1/tokens", body)
        return result

    def get_token(self, token_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/tokens/{token_id}")
        return result

    def delete_token(self, token_id: str) -> None:
        self._call("DELETE", f"/api/v1/tokens/{token_id}")

    def delete_platform(self, fingerprint: str) -> None:
        self._call("DELETE", f"/api/v1/platforms/{fingerprint}")

    def search_audit(self, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self._call("GET", "/api/v1/audit", params=dict(filters))["entries"]
        return entries
