"""The broker's HTTP face: a Starlette app translating requests to ``Broker`` calls.

The edge refuses text no database stores (NUL, lone UTF-16 surrogates) in bodies, paths,
queries and headers with 400, and answers 503 with ``Retry-After`` while the database is
unreachable (logged once per outage); ``/healthz`` says the process lives, ``/readyz``
that it can reach its database.

Handlers call the (synchronous) broker directly on the event loop thread: every call is
a few short database statements and some microseconds of crypto, so a thread hop would
cost more than it saves; worker processes and replicas, not threads, are how the broker
scales out.  Key releases are the exception that awaits: on PostgreSQL their read runs on
a thread (the loop would otherwise sit in the round trip), policy evaluations the cache
lacks run in evaluation processes, and the wait for their audit row's commit yields the
loop, so concurrent releases share one audit transaction.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from layerseal.broker import admin
from layerseal.broker.console import api_routes as console_api_routes
from layerseal.broker.console import console_routes
from layerseal.broker.metrics import Metrics
from layerseal.broker.openapi import openapi_document
from layerseal.broker.ratelimit import RateLimiter
from layerseal.broker.requests import (
    AuthRequest,
    PlatformRequest,
    RevokeAttestationRequest,
    TokenRequest,
    batch_resources,
    unused_flag,
)
from layerseal.broker.service import Broker, KeyInfo, Principal, batch_payload
from layerseal.errors import BadInputError, LayersealError
from layerseal.kbs.constants import SESSION_COOKIE
from layerseal.kbs.problems import RateLimitedError, problem, status_of

log = logging.getLogger("layerseal.broker.http")

MAX_BODY = 1 << 20
PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")

Handler = Callable[[Request], Awaitable[Response]]
_NO_DATABASE = frozenset({"healthz", "metrics", "openapi", "kbs_auth"})  # endpoints that never touch it


def _problem_response(status: int, kind: str, detail: str, path: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="layerseal"'} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(
        problem(status, kind, _printable(detail), _printable(path)),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _printable(text: str) -> str:
    return _BAD_TEXT.sub("\ufffd", text)


def _check_text(value: Any, where: str) -> None:
    """400 for NUL or a lone surrogate anywhere in *value* (strings, keys, nested)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _BAD_TEXT.search(item):
                raise BadInputError(f"{where}: expected text without NUL or lone surrogates, seen one")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_request_text(request: Request) -> None:
    # on the raw scope: building Starlette's URL and Headers objects cost a quarter of a
    # /healthz request (measured)
    scope = request.scope
    if _BAD_TEXT.search(scope["path"]):
        raise BadInputError("request path: expected text without NUL or lone surrogates, seen one")
    if b"%00" in scope["query_string"]:  # the only way into a decoded query (it replaces the rest)
        raise BadInputError("query string: expected text without NUL, seen one")
    for _name, value in scope["headers"]:
        if b"\x00" in value:
            raise BadInputError("request headers: expected text without NUL, seen one")


def _database_down(exc: BaseException) -> bool:
    """Whether *exc* says the database cannot be reached (as opposed to a bug)."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class OutageLog:
    """Logs a database outage once when it starts and once when it ends, not per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.refused = 0

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.refused += 1
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
        log.error(
            "database unavailable: answering 503 until it is back",
            extra={"fields": {"error": type(exc).__name__, "cause": str(exc).splitlines()[0][:200]}},
        )

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            seconds, refused = time.monotonic() - self.down_since, self.refused
            self.down_since, self.refused = None, 0
        log.warning(
            "database available again",
            extra={"fields": {"down_s": round(seconds, 1), "refused_requests": refused}},
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


async def _json(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise BadInputError(f"request body: expected at most {MAX_BODY} bytes, seen {declared[:20]}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BadInputError(f"request body: expected at most {MAX_BODY} bytes, seen more")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadInputError("request body: expected JSON, seen invalid data") from exc
    if not isinstance(value, dict):
        raise BadInputError(f"request body: expected a JSON object, seen {type(value).__name__}")
    _check_text(value, "request body")
    return value


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or len(value) > 12:
        raise BadInputError(f"query parameter {name!r}: expected a non-negative integer, seen {value[:20]!r}")
    return int(value)


def create_app(
    broker: Broker,
    *,
    limiter: RateLimiter | None = None,
    metrics: Metrics | None = None,
    console: bool = False,
) -> Starlette:
    """The ASGI application serving KBS RCAR, the publisher API and operations endpoints
    (and, with *console*, the operator console's pages under ``/console``)."""
    limiter = limiter or RateLimiter()
    metrics = metrics or Metrics()
    outage = OutageLog()
    broker.listeners.append(metrics.observe_decision)

    def endpoint(name: str) -> Callable[[Handler], Handler]:
        def wrap(fn: Handler) -> Handler:
            async def handler(request: Request) -> Response:
                start = time.perf_counter()
                try:
                    _check_request_text(request)
                    response = await fn(request)
                    if outage.down_since is not None and name not in _NO_DATABASE:
                        outage.succeeded()
                except LayersealError as exc:
                    status, kind = status_of(exc)
                    if status == 500:
                        log.error("request failed", exc_info=exc, extra={"fields": {"endpoint": name}})
                        response = _problem_response(500, "internal", "internal error", request.url.path)
                    else:
                        response = _problem_response(status, kind, str(exc), request.url.path)
                except Exception as exc:
                    if _database_down(exc):
                        outage.failed(exc)
                        response = _problem_response(
                            503, "unavailable", "database unavailable, retry later", request.url.path
                        )
                    else:  # a bug: log the type, never the details, to the client
                        log.error("unhandled error", exc_info=exc, extra={"fields": {"endpoint": name}})
                        response = _problem_response(500, "internal", "internal error", request.url.path)
                elapsed = time.perf_counter() - start
                metrics.observe_request(name, response.status_code, elapsed)
                if response.status_code >= 400 or log.isEnabledFor(logging.DEBUG):
                    log.info(
                        "request",
                        extra={
                            "fields": {
                                "endpoint": name,
                                "method": request.method,
                                "path": _printable(request.url.path[:200]),
                                "status": response.status_code,
                                "ms": round(elapsed * 1000, 3),
                                "client": _client(request),
                            }
                        },
                    )
                return response

            return handler

        return wrap

    def principal(request: Request) -> Principal:
        return broker.authenticate(request.headers.get("authorization"))

    # ------------------------------------------------------------------ KBS RCAR

    @endpoint("kbs_auth")
    async def kbs_auth(request: Request) -> Response:
        client = _client(request)
        if not limiter.allow(client):
            raise RateLimitedError(f"/kbs/v0/auth: expected at most {limiter.rate:g}/s per client, seen more")
        challenge = broker.auth(client, AuthRequest.from_json(await _json(request)))
        response = JSONResponse({"nonce": challenge.nonce, "extra-params": ""})
        max_age = max(1, int(challenge.expires_at - broker.clock()))
        response.set_cookie(
            SESSION_COOKIE, challenge.session_id, max_age=max_age, httponly=True, samesite="strict"
        )
        return response

    @endpoint("kbs_attest")
    async def kbs_attest(request: Request) -> Response:
        client = _client(request)
        if not limiter.allow(client):
            raise RateLimitedError(
                f"/kbs/v0/attest: expected at most {limiter.rate:g}/s per client, seen more"
            )
        body = await _json(request)
        session_id = request.cookies.get(SESSION_COOKIE)
        # parsed by the broker, once it has seen the cookie: without one the answer is 401
        token, exp, _ = broker.attest(session_id, body, client)
        response = JSONResponse({"token": token})
        assert session_id is not None
        max_age = max(1, int(exp - broker.clock()))
        response.set_cookie(SESSION_COOKIE, session_id, max_age=max_age, httponly=True, samesite="strict")
        return response

    @endpoint("kbs_resource")
    async def kbs_resource(request: Request) -> Response:
        p = request.path_params
        path = f"{p['repo']}/{p['type']}/{p['tag']}"
        attested, keks = await broker.release_request_async(
            request.cookies.get(SESSION_COOKIE), request.headers.get("authorization"), [path]
        )
        return JSONResponse(broker.seal_response(attested, next(iter(keks.values()))))

    @endpoint("kbs_resources")
    async def kbs_resources(request: Request) -> Response:
        resources = batch_resources(await _json(request))
        attested, keks = await broker.release_request_async(
            request.cookies.get(SESSION_COOKIE), request.headers.get("authorization"), resources
        )
        return JSONResponse(broker.seal_response(attested, batch_payload(keks)))

    # ------------------------------------------------------------------ publisher API

    def key_response(info: KeyInfo, packet: bytes | None = None, status: int = 200) -> JSONResponse:
        body: dict[str, Any] = {"key": info.to_json()}
        if packet is not None:
            body["packet"] = base64.b64encode(packet).decode()
            body["kid"] = json.loads(packet)["kid"]
        return JSONResponse(body, status_code=status)

    @endpoint("keys_create")
    async def keys_create(request: Request) -> Response:
        who = principal(request)
        info, packet = broker.create_layer_key(who, await _json(request))
        return key_response(info, packet, 201)

    @endpoint("keys_list")
    async def keys_list(request: Request) -> Response:
        who = principal(request)
        q = request.query_params
        keys = broker.list_keys(who, q.get("tenant"), q.get("repository"))
        return JSONResponse({"keys": [k.to_json() for k in keys]})

    # the endpoints that only name an object in their path, or only a tenant in their query

    def of_key(name: str, call: Callable[[Principal, str], KeyInfo]) -> Handler:
        async def handler(request: Request) -> Response:
            return key_response(call(principal(request), request.path_params["key_id"]))

        return endpoint(name)(handler)

    def removal(name: str, call: Callable[[Principal, str], None], param: str) -> Handler:
        async def handler(request: Request) -> Response:
            call(principal(request), request.path_params[param])
            return Response(status_code=204)

        return endpoint(name)(handler)

    def listing(name: str, field: str, call: Callable[[Principal, str | None], object]) -> Handler:
        async def handler(request: Request) -> Response:
            return JSONResponse({field: call(principal(request), request.query_params.get("tenant"))})

        return endpoint(name)(handler)

    def with_body(name: str, call: Callable[[Principal, dict[str, Any]], dict[str, Any]]) -> Handler:
        async def handler(request: Request) -> Response:
            who = principal(request)
            return JSONResponse(call(who, await _json(request)))

        return endpoint(name)(handler)

    # the broker's methods are looked up per request: building the app touches no broker
    keys_get = of_key("keys_get", lambda who, key_id: broker.get_key(who, key_id))
    keys_revoke = of_key("keys_revoke", lambda who, key_id: broker.revoke_key(who, key_id))
    keys_delete = removal("keys_delete", lambda who, key_id: broker.delete_key(who, key_id), "key_id")
    policies_put = with_body("policies_put", lambda who, body: broker.set_policy(who, body))
    policies_list = listing("policies_list", "policies", lambda who, t: broker.list_policies(who, t))
    refvalues_add = with_body("refvalues_add", lambda who, body: broker.change_refvalues(who, body))
    refvalues_remove = with_body(
        "refvalues_remove", lambda who, body: broker.change_refvalues(who, body, remove=True)
    )
    refvalues_list = listing("refvalues_list", "refvalues", lambda who, t: broker.list_refvalues(who, t))
    platforms_delete = removal(
        "platforms_delete", lambda who, fp: broker.delete_platform(who, fp), "fingerprint"
    )
    # tokens are revoked, never erased: the audit log keeps naming them
    tokens_delete = removal("tokens_delete", lambda who, tid: broker.revoke_api_token(who, tid), "token_id")
    tokens_revoke = removal("tokens_revoke", lambda who, tid: broker.revoke_api_token(who, tid), "token_id")

    @endpoint("keys_rotate")
    async def keys_rotate(request: Request) -> Response:
        who = principal(request)
        info, packet = broker.rotate_key(who, request.path_params["key_id"], await _json(request))
        return key_response(info, packet, 201)

    @endpoint("keys_unused")
    async def keys_unused(request: Request) -> Response:
        who = principal(request)
        unused = unused_flag(await _json(request))
        return key_response(broker.mark_unused(who, request.path_params["key_id"], unused))

    @endpoint("keys_version_status")
    async def keys_version_status(request: Request) -> Response:
        who = principal(request)
        p = request.path_params
        status = {"retire": "retired", "revoke": "revoked", "activate": "active"}.get(p["action"])
        if status is None:
            raise BadInputError(
                f"version action: expected retire, revoke or activate, seen {p['action'][:20]!r}"
            )
        return key_response(broker.set_version_status(who, p["key_id"], int(p["version"]), status))

    @endpoint("policies_delete")
    async def policies_delete(request: Request) -> Response:
        q = request.query_params
        broker.delete_policy(principal(request), q.get("tenant"), q.get("scope"), q.get("target"))
        return Response(status_code=204)

    @endpoint("platforms_register")
    async def platforms_register(request: Request) -> Response:
        who = principal(request)
        fingerprint = broker.register_platform(who, PlatformRequest.from_json(await _json(request)))
        return JSONResponse({"fingerprint": fingerprint}, status_code=201)

    @endpoint("platforms_list")
    async def platforms_list(request: Request) -> Response:
        return JSONResponse({"platforms": broker.list_platforms(principal(request))})

    @endpoint("tokens_create")
    async def tokens_create(request: Request) -> Response:
        who = principal(request)
        token_id, token, expires_at = broker.create_api_token(
            who, TokenRequest.from_json(await _json(request))
        )
        return JSONResponse({"token_id": token_id, "token": token, "expires_at": expires_at}, status_code=201)

    @endpoint("tokens_list")
    async def tokens_list(request: Request) -> Response:
        return JSONResponse({"tokens": admin.token_views(broker, principal(request))})

    @endpoint("tokens_get")
    async def tokens_get(request: Request) -> Response:
        return JSONResponse(admin.token_view(broker, principal(request), request.path_params["token_id"]))

    @endpoint("attestation_revoke")
    async def attestation_revoke(request: Request) -> Response:
        who = principal(request)
        body = RevokeAttestationRequest.from_json(await _json(request))
        return JSONResponse({"revoked": broker.revoke_attestation(who, body)})

    @endpoint("audit_list")
    async def audit_list(request: Request) -> Response:
        who = principal(request)
        entries = admin.search_audit(broker, who, dict(request.query_params))
        return JSONResponse({"entries": entries})

    # ------------------------------------------------------------------ operations

    @endpoint("healthz")
    async def healthz(request: Request) -> Response:
        """Liveness: the process answers (its database may be down: see /readyz)."""
        return JSONResponse({"status": "ok"})

    @endpoint("readyz")
    async def readyz(request: Request) -> Response:
        """Readiness: the database answers a query."""
        broker.ping()
        return JSONResponse({"status": "ready"})

    @endpoint("metrics")
    async def metrics_endpoint(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @endpoint("jwks")
    async def jwks_endpoint(request: Request) -> Response:
        # public: services that receive our attestation tokens verify them with this key
        return JSONResponse(broker.signer.jwks(), headers={"Cache-Control": "public, max-age=300"})

    openapi = openapi_document()

    @endpoint("openapi")
    async def openapi_endpoint(request: Request) -> Response:
        return JSONResponse(openapi)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        kind = {404: "not-found", 405: "method-not-allowed"}.get(status, "http-error")
        detail = (
            f"{request.method} {request.url.path[:200]}: no such endpoint"
            if status in (404, 405)
            else "error"
        )
        return _problem_response(status, kind, detail, request.url.path)

    routes: list[BaseRoute] = [
        Route("/kbs/v0/auth", kbs_auth, methods=["POST"]),
        Route("/kbs/v0/attest", kbs_attest, methods=["POST"]),
        Route("/kbs/v0/resource/{repo}/{type}/{tag}", kbs_resource, methods=["GET"]),
        Route("/kbs/v0/resources", kbs_resources, methods=["POST"]),
        Route("/.well-known/jwks.json", jwks_endpoint, methods=["GET"]),
        Route("/api/v1/keys", keys_create, methods=["POST"]),
        Route("/api/v1/keys", keys_list, methods=["GET"]),
        Route("/api/v1/keys/{key_id}", keys_get, methods=["GET"]),
        Route("/api/v1/keys/{key_id}", keys_delete, methods=["DELETE"]),
        Route("/api/v1/keys/{key_id}/rotate", keys_rotate, methods=["POST"]),
        Route("/api/v1/keys/{key_id}/revoke", keys_revoke, methods=["POST"]),
        Route("/api/v1/keys/{key_id}/unused", keys_unused, methods=["POST"]),
        Route("/api/v1/keys/{key_id}/versions/{version:int}/{action}", keys_version_status, methods=["POST"]),
        Route("/api/v1/policies", policies_put, methods=["PUT"]),
        Route("/api/v1/policies", policies_list, methods=["GET"]),
        Route("/api/v1/policies", policies_delete, methods=["DELETE"]),
        Route("/api/v1/refvalues", refvalues_add, methods=["POST"]),
        Route("/api/v1/refvalues", refvalues_list, methods=["GET"]),
        Route("/api/v1/refvalues/remove", refvalues_remove, methods=["POST"]),
        Route("/api/v1/platforms", platforms_register, methods=["POST"]),
        Route("/api/v1/platforms", platforms_list, methods=["GET"]),
        Route("/api/v1/platforms/{fingerprint}", platforms_delete, methods=["DELETE"]),
        Route("/api/v1/tokens", tokens_create, methods=["POST"]),
        Route("/api/v1/tokens", tokens_list, methods=["GET"]),
        Route("/api/v1/tokens/{token_id}/revoke", tokens_revoke, methods=["POST"]),
        Route("/api/v1/tokens/{token_id}", tokens_get, methods=["GET"]),
        Route("/api/v1/tokens/{token_id}", tokens_delete, methods=["DELETE"]),
        Route("/api/v1/attestation-tokens/revoke", attestation_revoke, methods=["POST"]),
        Route("/api/v1/audit", audit_list, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
    ]
    routes += console_api_routes(broker, endpoint, metrics)
    if console:
        routes += console_routes(broker, metrics)
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: http_error})
