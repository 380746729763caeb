"""Broker error kinds and their RFC 7807 problem documents (pure).

The layerseal families map to distinct statuses: bad input 400, unauthenticated 401,
denied (evidence or policy) 403, unknown 404, rate limited 429, full or unreachable
store 503.  Anything else is a bug and becomes a bare 500 without details.
"""

from __future__ import annotations

from typing import Any

from layerseal.errors import BadInputError, DeniedError, LayersealError, NotFoundError, TransportError

PROBLEM_TYPE = "https://layerseal.dev/problems/"


class UnauthenticatedError(DeniedError):
    """No credential, or an unknown, expired or revoked one (HTTP 401)."""


class ForbiddenError(DeniedError):
    """Authenticated, but not allowed: wrong scope, tenant, evidence or policy (HTTP 403)."""


class PolicyDeniedError(ForbiddenError):
    """A release policy refused a key; the message names the failing condition."""


class RateLimitedError(DeniedError):
    """Too many requests from one client (HTTP 429)."""


class UnavailableError(TransportError):
    """The broker cannot take the request now, e.g. the session store is full (HTTP 503)."""


def status_of(exc: LayersealError) -> tuple[int, str]:
    if isinstance(exc, UnauthenticatedError):
        return 401, "unauthenticated"
    if isinstance(exc, RateLimitedError):
        return 429, "rate-limited"
    if isinstance(exc, PolicyDeniedError):
        return 403, "policy-denied"
    if isinstance(exc, DeniedError):
        return 403, "forbidden"
    if isinstance(exc, NotFoundError):
        return 404, "not-found"
    if isinstance(exc, BadInputError):
        return 400, "bad-request"
    if isinstance(exc, UnavailableError | TransportError):
        return 503, "unavailable"
    return 500, "internal"


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem(status: int, kind: str, detail: str, instance: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": PROBLEM_TYPE + kind,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        doc["instance"] = instance
    return doc
