"""The broker's OpenAPI 3.1 document, written by hand (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

_PROBLEM = {"$ref": "#/components/responses/Problem"}


def _op(
    summary: str, *, body: str | None = None, ok: str = "200", auth: str | None = "apiToken"
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {"description": "success"},
            "400": _PROBLEM,
            "401": _PROBLEM,
            "403": _PROBLEM,
            "404": _PROBLEM,
        },
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    if auth is not None:
        op["security"] = [{auth: []}]
    return op


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "layerseal key broker",
            "version": "0.1.0",
            "description": (
                "Releases per-layer keys to attested enclaves (KBS RCAR 0.4.0) and manages them "
                "for publishers. Resource paths are <tenant>/layer-key/<key-id>[.<version>]; "
                "errors are RFC 7807 problem JSON."
            ),
        },
        "paths": {
            "/kbs/v0/auth": {
                "post": _op(
                    "RCAR request: returns a nonce and sets cookie kbs-session-id",
                    body="KbsRequest",
                    auth=None,
                )
            },
            "/kbs/v0/attest": {
                "post": _op(
                    "RCAR attestation: evidence bound to nonce and tee-pubkey; returns a JWT",
                    body="KbsAttestation",
                    auth="session",
                )
            },
            "/kbs/v0/resource/{repo}/{type}/{tag}": {
                "get": _op("One layer KEK as a flattened JWE to the tee-pubkey", auth="attestation")
            },
            "/kbs/v0/resources": {
                "post": _op(
                    "Batch: many layer KEKs in one JWE ({resources:{path:b64}})",
                    body="BatchRequest",
                    auth="attestation",
                )
            },
            "/api/v1/keys": {
                "post": _op(
                    "Create the KEK of a new image portion; returns the CoCo key packet",
                    body="CreateKey",
                    ok="201",
                ),
                "get": _op("List keys (query: tenant, repository)"),
            },
            "/api/v1/keys/{key_id}": {
                "get": _op("Describe a key"),
                "delete": _op("Delete a key marked unused or revoked", ok="204"),
            },
            "/api/v1/keys/{key_id}/rotate": {
                "post": _op("New KEK version; body {optsdata} or {packet}", ok="201")
            },
            "/api/v1/keys/{key_id}/revoke": {"post": _op("Revoke every version of a key")},
            "/api/v1/keys/{key_id}/unused": {
                "post": _op("Mark a key unused (cleanable) or used again: {unused: bool}")
            },
            "/api/v1/keys/{key_id}/versions/{version}/{action}": {
                "post": _op("Version action: retire, revoke or activate")
            },
            "/api/v1/policies": {
                "put": _op(
                    "Set a release policy {tenant?, scope: tenant|repository|key, target?, policy}",
                    body="SetPolicy",
                ),
                "get": _op("List policies (query: tenant)"),
                "delete": _op("Delete a policy (query: tenant, scope, target)", ok="204"),
            },
            "/api/v1/refvalues": {
                "post": _op("Add reference values {tenant?, name, values}"),
                "get": _op("List reference values"),
            },
            "/api/v1/refvalues/remove": {"post": _op("Remove reference values {tenant?, name, values}")},
            "/api/v1/platforms": {
                "post": _op("Register a sim platform certificate (admin)", ok="201"),
                "get": _op("List platforms (admin)"),
            },
            "/api/v1/platforms/{fingerprint}": {"delete": _op("Unregister a platform (admin)", ok="204")},
            "/api/v1/tokens": {
                "post": _op(
                    "Create an API token: tenant, scopes, description, expires_in s (admin)", ok="201"
                ),
                "get": _op("List API tokens (admin)"),
            },
            "/api/v1/tokens/{token_id}/revoke": {"post": _op("Revoke an API token (admin)", ok="204")},
            "/api/v1/tokens/{token_id}": {
                "get": _op("One API token: status, scopes, expires_at, last_used_at (admin)"),
                "delete": _op("Revoke an API token; it stays listed as revoked (admin)", ok="204"),
            },
            "/api/v1/attestation-tokens/revoke": {
                "post": _op("Revoke an attestation JWT {token} or {jti} (admin)")
            },
            "/api/v1/audit": {
                "get": _op(
                    "Audit log entries (query: tenant, key, repository, outcome ok|deny, action, "
                    "since, until as ISO-8601 or epoch seconds, after, limit)"
                )
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/.well-known/jwks.json": {
                "get": {
                    "summary": "JWK Set of the attestation-token key (public)",
                    "responses": {"200": {"description": "{keys:[{kty,crv,x,y,kid,alg,use}]}"}},
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}
            },
        },
        "components": {
            "securitySchemes": {
                "apiToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "lsk_<id>_<secret> publisher token",
                },
                "attestation": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "session": {"type": "apiKey", "in": "cookie", "name": "kbs-session-id"},
            },
            "responses": {
                "Problem": {
                    "description": "RFC 7807 problem",
                    "content": {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                    },
                }
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "instance": {"type": "string"},
                    },
                },
                "KbsRequest": {
                    "type": "object",
                    "required": ["version", "tee"],
                    "properties": {
                        "version": {"const": "0.4.0"},
                        "tee": {"enum": ["sim", "sample"]},
                        "extra-params": {},
                    },
                },
                "KbsAttestation": {
                    "type": "object",
                    "required": ["runtime-data", "tee-evidence"],
                    "properties": {
                        "runtime-data": {
                            "type": "object",
                            "properties": {"nonce": {"type": "string"}, "tee-pubkey": {"type": "object"}},
                        },
                        "tee-evidence": {"type": "object"},
                        "init-data": {},
                    },
                },
                "BatchRequest": {
                    "type": "object",
                    "required": ["resources"],
                    "properties": {
                        "resources": {"type": "array", "items": {"type": "string"}, "maxItems": 256}
                    },
                },
                "CreateKey": {
                    "type": "object",
                    "required": ["repository", "layer_digest", "optsdata"],
                    "properties": {
                        "tenant": {"type": "string"},
                        "repository": {"type": "string"},
                        "layer_digest": {"type": "string"},
                        "optsdata": {"type": "string", "contentEncoding": "base64"},
                    },
                },
                "SetPolicy": {
                    "type": "object",
                    "required": ["policy"],
                    "properties": {
                        "tenant": {"type": "string"},
                        "scope": {"enum": ["tenant", "repository", "key"]},
                        "target": {"type": "string"},
                        "policy": {"type": "object"},
                    },
                },
            },
        },
    }
