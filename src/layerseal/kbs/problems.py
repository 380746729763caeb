"""Broker error kinds and their RFC 7807 problem documents (pure).

The layerseal families map to distinct statuses: bad input 400, unauthenticated 401,
denied (evidence or policy) 403, unknown 404, rate limited 429, full or unreachable
store 503.  Anything else is a bug and becomes a bare 500 without details.
"""

from __future__ import annotations

from typing import Any

from layerseal.errors import BadInputError, DeniedError, LayersealError, NotFoundError, TransportError
from layerseal.wire.jsonload import object_or_none

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


# the first family an error belongs to gives its status: subclasses before their bases
_STATUSES: tuple[tuple[type[LayersealError], int, str], ...] = (
    (UnauthenticatedError, 401, "unauthenticated"),
    (RateLimitedError, 429, "rate-limited"),
    (PolicyDeniedError, 403, "policy-denied"),
    (DeniedError, 403, "forbidden"),
    (NotFoundError, 404, "not-found"),
    (BadInputError, 400, "bad-request"),
    (TransportError, 503, "unavailable"),  # UnavailableError included
)


def status_of(exc: LayersealError) -> tuple[int, str]:
    for family, status, kind in _STATUSES:
        if isinstance(exc, family):
            return status, kind
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


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]


def error_for(method: str, path: str, status: int, body: bytes) -> LayersealError:
    """The layerseal error for a broker error response (RFC 7807 document or text)."""
    doc = object_or_none(body) or {}
    detail = str(doc.get("detail", body.decode("utf-8", "replace")))
    kind = str(doc.get("type", ""))
    message = f"broker {method} {path}: HTTP {status}: {_one_line(detail)}"
    if status == 400:
        return BadInputError(message)
    if status == 401:
        return UnauthenticatedError(message)
    if status == 403:
        return PolicyDeniedError(message) if kind.endswith("/policy-denied") else ForbiddenError(message)
    if status == 404:
        return NotFoundError(message)
    if status == 429:
        return RateLimitedError(message)
    if status == 503:
        return UnavailableError(message)
    return TransportError(message)
