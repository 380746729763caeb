"""The broker's OpenAPI 3.1 document, written by hand (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

_PROBLEM = {"$ref": "#/components/responses/Problem"}


def _parameter(where: str, name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema,
    }


def _path(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return _parameter("path", name, description, schema or {"type": "string", "maxLength": 200})


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return _parameter("query", name, description, schema or {"type": "string"})


_KEY_ID = _path(
    "key_id", "key id: 'k' + 26 base32 characters", {"type": "string", "pattern": "^k[a-z2-7]{26}$"}
)
_TENANT_Q = _query("tenant", "tenant (admin tokens: any; others: their own)")


def _op(
    summary: str,
    *,
    body: str | None = None,
    ok: str = "200",
    auth: str | None = "apiToken",
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {"description": "success"},
            "400": _PROBLEM,
            "401": _PROBLEM,
            "403": _PROBLEM,
            "404": _PROBLEM,
            "429": _PROBLEM,
            "503": _PROBLEM,
        },
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    if auth is not None:
        op["security"] = [{auth: []}]
    return op


def _plain(summary: str, media: str = "application/json") -> dict[str, Any]:
    return {
        "summary": summary,
        "responses": {"200": {"description": "ok", "content": {media: {}}}, "503": _PROBLEM},
    }


# leaf schemas, copied into each property by _object
_STRING: dict[str, Any] = {"type": "string"}
_BOOLEAN: dict[str, Any] = {"type": "boolean"}
_OBJECT: dict[str, Any] = {"type": "object"}
_BASE64: dict[str, Any] = {"type": "string", "contentEncoding": "base64"}


def _object(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    """A JSON object schema with *properties*, of which *required* must be present."""
    schema: dict[str, Any] = {"type": "object"}
    if required:
        schema["required"] = list(required)
    # each property gets its own copy, so a consumer editing one in place changes no other
    schema["properties"] = {name: dict(prop) for name, prop in properties.items()}
    return schema


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
                    "RCAR request: returns a nonce and sets cookie kbs-session-id (a MAC'd challenge)",
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
                "get": _op(
                    "One layer KEK as a flattened JWE to the tee-pubkey",
                    auth="attestation",
                    params=[
                        _path("repo", "tenant"),
                        _path("type", "resource type: layer-key"),
                        _path("tag", "<key-id>[.<version>]"),
                    ],
                )
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
                "get": _op("List keys", params=[_TENANT_Q, _query("repository", "OCI repository name")]),
            },
            "/api/v1/keys/{key_id}": {
                "get": _op("Describe a key", params=[_KEY_ID]),
                "delete": _op("Delete a key marked unused or revoked", ok="204", params=[_KEY_ID]),
            },
            "/api/v1/keys/{key_id}/rotate": {
                "post": _op(
                    "New KEK version; body {optsdata} or {packet}",
                    ok="201",
                    body="RotateKey",
                    params=[_KEY_ID],
                )
            },
            "/api/v1/keys/{key_id}/revoke": {"post": _op("Revoke every version of a key", params=[_KEY_ID])},
            "/api/v1/keys/{key_id}/unused": {
                "post": _op(
                    "Mark a key unused (cleanable) or used again: {unused: bool}",
                    body="MarkUnused",
                    params=[_KEY_ID],
                )
            },
            "/api/v1/keys/{key_id}/versions/{version}/{action}": {
                "post": _op(
                    "Version action: retire, revoke or activate",
                    params=[
                        _KEY_ID,
                        _path("version", "key version", {"type": "integer", "minimum": 1}),
                        _path("action", "what to do", {"enum": ["retire", "revoke", "activate"]}),
                    ],
                )
            },
            "/api/v1/policies": {
                "put": _op(
                    "Set a release policy {tenant?, scope: tenant|repository|key, target?, policy}",
                    body="SetPolicy",
                ),
                "get": _op("List policies", params=[_TENANT_Q]),
                "delete": _op(
                    "Delete a policy",
                    ok="204",
                    params=[
                        _TENANT_Q,
                        _query(
                            "scope", "tenant, repository or key", {"enum": ["tenant", "repository", "key"]}
                        ),
                        _query("target", "repository name or key id"),
                    ],
                ),
            },
            "/api/v1/refvalues": {
                "post": _op("Add reference values {tenant?, name, values}", body="RefValues"),
                "get": _op("List reference values", params=[_TENANT_Q]),
            },
            "/api/v1/refvalues/remove": {
                "post": _op("Remove reference values {tenant?, name, values}", body="RefValues")
            },
            "/api/v1/platforms": {
                "post": _op("Register a sim platform certificate (admin)", ok="201", body="Platform"),
                "get": _op("List platforms (admin)"),
            },
            "/api/v1/platforms/{fingerprint}": {
                "delete": _op(
                    "Unregister a platform (admin)",
                    ok="204",
                    params=[_path("fingerprint", "certificate fingerprint")],
                )
            },
            "/api/v1/tokens": {
                "post": _op("Create an API token (admin), optionally expiring", ok="201", body="CreateToken"),
                "get": _op("List API tokens with status and expiry (admin)"),
            },
            "/api/v1/tokens/{token_id}/revoke": {
                "post": _op(
                    "Revoke an API token (admin)", ok="204", params=[_path("token_id", "API token id")]
                )
            },
            "/api/v1/tokens/{token_id}": {
                "get": _op(
                    "One API token: status, scopes, expires_at, last_used_at (admin)",
                    params=[_path("token_id", "API token id")],
                ),
                "delete": _op(
                    "Revoke an API token; it stays listed as revoked (admin)",
                    ok="204",
                    params=[_path("token_id", "API token id")],
                ),
            },
            "/api/v1/attestation-tokens/revoke": {
                "post": _op("Revoke an attestation JWT {token} or {jti} (admin)", body="RevokeAttestation")
            },
            "/.well-known/jwks.json": {
                "get": {
                    "summary": "JWK Set of the attestation-token key (public)",
                    "responses": {"200": {"description": "{keys:[{kty,crv,x,y,kid,alg,use}]}"}},
                }
            },
            "/api/v1/audit": {
                "get": _op(
                    "Audit log entries",
                    params=[
                        _TENANT_Q,
                        _query(
                            "after", "entries after this sequence number", {"type": "integer", "minimum": 0}
                        ),
                        _query("limit", "at most this many entries", {"type": "integer", "minimum": 1}),
                        *(
                            _query(name, description)
                            for name, description in (
                                ("key", "key id or kid"),
                                ("repository", "OCI repository name"),
                                ("outcome", "ok or deny"),
                                ("action", "audit action, e.g. release or attest"),
                                ("since", "ISO-8601 time or epoch seconds"),
                                ("until", "ISO-8601 time or epoch seconds"),
                            )
                        ),
                    ],
                )
            },
            "/api/v1/console/audit": {
                "get": _op(
                    "Audit timeline as the console shows it (filters; denials with their failing condition)",
                    params=[
                        _TENANT_Q,
                        *(
                            _query(name, description)
                            for name, description in (
                                ("repository", "OCI repository name"),
                                ("key", "key id or kid"),
                                ("platform", "platform fingerprint or TEE kind"),
                                ("outcome", "ok or deny"),
                                ("action", "audit action, e.g. release or attest"),
                                ("since", "ISO-8601 time or epoch seconds"),
                                ("until", "ISO-8601 time or epoch seconds"),
                                ("before", "paging cursor from the previous page"),
                            )
                        ),
                        _query(
                            "limit", "rows per page: 100, 1000 or 10000", {"type": "integer", "minimum": 1}
                        ),
                    ],
                )
            },
            "/api/v1/console/audit/{entry}": {
                "get": _op(
                    "One audit entry with the claims it judged (admins and its own tenant)",
                    params=[_path("entry", "audit entry id", {"type": "integer", "minimum": 0})],
                )
            },
            "/api/v1/console/images": {
                "get": _op(
                    "Keys per repository and layer: versions, status, releases, unused keys",
                    params=[_TENANT_Q, _query("repository", "OCI repository name")],
                )
            },
            "/api/v1/console/platforms": {
                "get": _op("Platforms (admin) and reference values", params=[_TENANT_Q])
            },
            "/api/v1/console/policies": {"get": _op("Release policies as stored", params=[_TENANT_Q])},
            "/api/v1/console/activity": {
                "get": _op(
                    "Releases and denials over time, release latency",
                    params=[
                        _TENANT_Q,
                        _query("since", "ISO-8601 time or epoch seconds"),
                        _query("until", "ISO-8601 time or epoch seconds"),
                    ],
                )
            },
            "/api/v1/policies/dry-run": {
                "post": _op(
                    "Evaluate a policy (not stored) against a recorded attestation or given claims",
                    body="DryRun",
                )
            },
            "/healthz": {"get": _plain("Liveness: the process answers")},
            "/readyz": {"get": _plain("Readiness: the database answers (503 problem while it does not)")},
            "/metrics": {"get": _plain("Prometheus metrics", "text/plain")},
            "/openapi.json": {"get": _plain("This document")},
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
                "Problem": _object(
                    {
                        "type": _STRING,
                        "title": _STRING,
                        "status": {"type": "integer"},
                        "detail": _STRING,
                        "instance": _STRING,
                    }
                ),
                "KbsRequest": _object(
                    {
                        "version": {"const": "0.4.0"},
                        "tee": {"enum": ["sim", "sample", "snp", "tdx", "az-snp-vtpm"]},
                        "extra-params": {},
                    },
                    "version",
                    "tee",
                ),
                "KbsAttestation": _object(
                    {
                        "runtime-data": _object({"nonce": _STRING, "tee-pubkey": _OBJECT}),
                        "tee-evidence": _OBJECT,
                        "init-data": {},
                    },
                    "runtime-data",
                    "tee-evidence",
                ),
                "BatchRequest": _object(
                    {"resources": {"type": "array", "items": {"type": "string"}, "maxItems": 256}},
                    "resources",
                ),
                "CreateKey": _object(
                    {"tenant": _STRING, "repository": _STRING, "layer_digest": _STRING, "optsdata": _BASE64},
                    "repository",
                    "layer_digest",
                    "optsdata",
                ),
                "RotateKey": _object({"optsdata": _BASE64, "packet": _BASE64, "retire_previous": _BOOLEAN}),
                "MarkUnused": _object({"unused": _BOOLEAN}),
                "RefValues": _object(
                    {
                        "tenant": _STRING,
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                        "values": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 1,
                            "maxItems": 1000,
                        },
                    },
                    "name",
                    "values",
                ),
                "Platform": _object(
                    {
                        "tee": {"const": "sim"},
                        "certificate": {"type": "string", "description": "PEM"},
                        "description": _STRING,
                    },
                    "certificate",
                ),
                "CreateToken": _object(
                    {
                        "tenant": _STRING,
                        "scopes": {
                            "type": "array",
                            "items": {
                                "enum": [
                                    "keys:write",
                                    "keys:read",
                                    "policy:write",
                                    "policy:read",
                                    "audit:read",
                                    "admin",
                                ]
                            },
                            "minItems": 1,
                        },
                        "description": _STRING,
                        "expires_at": {"type": "number", "description": "epoch seconds; absent: never"},
                        "expires_in": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "lifetime in seconds (instead of expires_at)",
                        },
                    },
                    "tenant",
                    "scopes",
                ),
                "DryRun": _object(
                    {
                        "tenant": _STRING,
                        "policy": _OBJECT,
                        "audit_entry": {"type": "integer", "minimum": 0},
                        "claims": _OBJECT,
                    },
                    "policy",
                ),
                "RevokeAttestation": _object({"token": _STRING, "jti": _STRING}),
                "SetPolicy": _object(
                    {
                        "tenant": _STRING,
                        "scope": {"enum": ["tenant", "repository", "key"]},
                        "target": _STRING,
                        "policy": _OBJECT,
                    },
                    "policy",
                ),
            },
        },
    }
