"""HTTP routes of the console: server-rendered pages under ``/console`` and their JSON
twins under ``/api/v1/console`` (plus ``POST /api/v1/policies/dry-run``).

The pages need no JavaScript: filters are GET forms, the dry-run and sign-in are POST
forms, charts are SVG drawn on the server.  Every console response carries a strict
Content-Security-Policy (only same-origin styles and images, no script at all), is not
cached, and cannot be framed; the browser is never sent anywhere but this broker.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from layerseal.broker.console import render, views
from layerseal.broker.console.session import Session, SessionSealer, same_token
from layerseal.broker.metrics import Metrics
from layerseal.broker.service import Broker, Principal
from layerseal.errors import BadInputError, LayersealError
from layerseal.kbs.problems import ForbiddenError, UnauthenticatedError, status_of
from layerseal.wire.jsonload import loads, loads_object

log = logging.getLogger("layerseal.broker.console")

Handler = Callable[[Request], Awaitable[Response]]
Wrap = Callable[[str], Callable[[Handler], Handler]]

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
CSRF_COOKIE = "layerseal-console-csrf"
MAX_FORM = 256 * 1024
_STATIC = {"console.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}


def _tls(request: Request) -> bool:
    return request.url.scheme == "https"


def session_cookie(request: Request) -> str:
    # the __Host- prefix (Secure, Path=/, no Domain) is only possible over TLS
    return "__Host-layerseal-console" if _tls(request) else "layerseal-console"


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


async def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise BadInputError("console form: expected application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise BadInputError(f"console form: expected at most {MAX_FORM} bytes, seen more")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInputError("console form: expected URL-encoded UTF-8") from exc
    return {k: v[0] for k, v in parsed.items()}


def _check_same_origin(request: Request) -> None:
    """Refuse a POST another site made the browser send (defence beside SameSite and CSRF tokens)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise ForbiddenError(f"console: expected a same-origin form, seen Sec-Fetch-Site {site[:20]!r}")
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != expected:
            raise ForbiddenError(f"console: expected Origin {expected}, seen {origin[:80]!r}")


def api_routes(broker: Broker, endpoint: Wrap, metrics: Metrics) -> list[BaseRoute]:
    """The JSON twins of the console pages and the policy dry-run (bearer-token API)."""

    def who(request: Request) -> Principal:
        return broker.authenticate(request.headers.get("authorization"))

    def q(request: Request, name: str) -> str | None:
        value = request.query_params.get(name)
        return value.strip() or None if value is not None else None

    @endpoint("console_audit")
    async def audit(request: Request) -> Response:
        tq = views.TimelineQuery.from_params(request.query_params)
        return JSONResponse(views.audit_timeline(broker, who(request), tq))

    @endpoint("console_audit_entry")
    async def audit_entry(request: Request) -> Response:
        return JSONResponse(views.audit_entry(broker, who(request), request.path_params["entry"]))

    @endpoint("console_images")
    async def images(request: Request) -> Response:
        return JSONResponse(
            views.images(broker, who(request), q(request, "tenant"), q(request, "repository"))
        )

    @endpoint("console_platforms")
    async def platforms(request: Request) -> Response:
        return JSONResponse(views.platforms(broker, who(request), q(request, "tenant")))

    @endpoint("console_policies")
    async def policies(request: Request) -> Response:
        return JSONResponse(views.policies(broker, who(request), q(request, "tenant")))

    @endpoint("console_activity")
    async def activity(request: Request) -> Response:
        return JSONResponse(
            views.activity(
                broker, who(request), q(request, "tenant"), q(request, "since"), q(request, "until"), metrics
            )
        )

    @endpoint("policies_dry_run")
    async def dry_run(request: Request) -> Response:
        principal = who(request)
        body = await request.body()
        if len(body) > MAX_FORM:
            raise BadInputError(f"policy dry-run: expected at most {MAX_FORM} bytes, seen {len(body)}")
        return JSONResponse(views.dry_run(broker, principal, loads_object(body, "policy dry-run")))

    return [
        Route("/api/v1/console/audit", audit, methods=["GET"]),
        Route("/api/v1/console/audit/{entry:int}", audit_entry, methods=["GET"]),
        Route("/api/v1/console/images", images, methods=["GET"]),
        Route("/api/v1/console/platforms", platforms, methods=["GET"]),
        Route("/api/v1/console/policies", policies, methods=["GET"]),
        Route("/api/v1/console/activity", activity, methods=["GET"]),
        Route("/api/v1/policies/dry-run", dry_run, methods=["POST"]),
    ]


def console_routes(broker: Broker, metrics: Metrics) -> list[BaseRoute]:
    """The HTML console (registered only with ``broker serve --console``)."""
    sealer = SessionSealer.for_store(broker.store, broker.custody)
    env = render.environment()

    def page(template: str, code: int = 200, **context: Any) -> Response:
        return HTMLResponse(env.get_template(template).render(**context), status_code=code)

    def streamed(template: str, **context: Any) -> Response:
        # a long timeline is sent as it renders, so the browser parses while we render
        chunks = render.chunked(env.get_template(template).generate(**context))
        return StreamingResponse(chunks, media_type="text/html; charset=utf-8")

    def signed_in(request: Request) -> tuple[Principal, Session]:
        session = sealer.open(request.cookies.get(session_cookie(request)))
        if session is None:
            raise UnauthenticatedError("console: expected a signed-in session, seen none")
        return broker.authenticate(f"Bearer {session.token}"), session

    def wrap(fn: Handler) -> Handler:
        async def handler(request: Request) -> Response:
            try:
                response = await fn(request)
            except UnauthenticatedError:
                response = RedirectResponse("/console/login", status_code=303)
                response.delete_cookie(session_cookie(request), path=_cookie_path(request))
            except LayersealError as exc:
                status, _kind = status_of(exc)
                detail = str(exc) if status != 500 else "internal error"
                if status == 500:
                    log.error("console request failed", exc_info=exc)
                response = page("error.html", status, status=status, detail=detail, me=None)
            except Exception as exc:  # a bug: the details go to the log, not the page
                log.error("console: unhandled error", exc_info=exc)
                response = page("error.html", 500, status=500, detail="internal error", me=None)
            return _secure(response)

        return handler

    def ctx(request: Request, who: Principal, session: Session, **extra: Any) -> dict[str, Any]:
        return {"me": who, "csrf": session.csrf, "path": request.url.path, **extra}

    def check_csrf(form: Mapping[str, str], expected: str | None) -> None:
        if not same_token(form.get("csrf"), expected):
            raise ForbiddenError("console form: expected this session's CSRF token, seen another or none")

    def q(request: Request, name: str) -> str | None:
        value = request.query_params.get(name)
        return value.strip() or None if value is not None else None

    # ------------------------------------------------------------ sign-in

    async def login_form(request: Request) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        response = page("login.html", csrf=csrf, error=None, me=None)
        response.set_cookie(
            CSRF_COOKIE,
            csrf,
            max_age=3600,
            httponly=True,
            samesite="strict",
            secure=_tls(request),
            path="/console",
        )
        return response

    async def login(request: Request) -> Response:
        _check_same_origin(request)
        form = await _form(request)
        check_csrf(form, request.cookies.get(CSRF_COOKIE))
        token = form.get("token", "").strip()
        try:
            broker.authenticate(f"Bearer {token}")
        except (UnauthenticatedError, BadInputError):
            return page(
                "login.html", 401, csrf=form.get("csrf"), error="unknown, revoked or expired token", me=None
            )
        cookie, session = sealer.seal(token)
        response = RedirectResponse("/console/audit", status_code=303)
        response.set_cookie(
            session_cookie(request),
            cookie,
            max_age=int(session.expires_at - broker.clock()),
            httponly=True,
            samesite="strict",
            secure=_tls(request),
            path=_cookie_path(request),
        )
        return response

    async def logout(request: Request) -> Response:
        _check_same_origin(request)
        _who, session = signed_in(request)
        check_csrf(await _form(request), session.csrf)
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(session_cookie(request), path=_cookie_path(request))
        return response

    async def root(request: Request) -> Response:
        return RedirectResponse("/console/audit", status_code=303)

    # ------------------------------------------------------------ pages

    async def audit_page(request: Request) -> Response:
        who, session = signed_in(request)
        tq = views.TimelineQuery.from_params(request.query_params)
        data = views.audit_timeline(broker, who, tq)
        next_link = None
        if data["next"] is not None:
            next_link = "/console/audit?" + urlencode(tq.params(before=data["next"]))
        context = ctx(request, who, session, data=data, tq=tq, next_link=next_link)
        if len(data["entries"]) > 500:
            return streamed("audit.html", **context)
        return page("audit.html", **context)

    async def entry_page(request: Request) -> Response:
        who, session = signed_in(request)
        entry = views.audit_entry(broker, who, request.path_params["entry"])
        claims = json.dumps(entry["claims"], indent=2, sort_keys=True) if entry["claims"] else None
        return page("entry.html", **ctx(request, who, session, e=entry, claims_text=claims))

    async def keys_page(request: Request) -> Response:
        who, session = signed_in(request)
        data = views.images(broker, who, q(request, "tenant"), q(request, "repository"))
        return page("keys.html", **ctx(request, who, session, data=data))

    async def platforms_page(request: Request) -> Response:
        who, session = signed_in(request)
        data = views.platforms(broker, who, q(request, "tenant"))
        return page("platforms.html", **ctx(request, who, session, data=data))

    async def policy_page(request: Request) -> Response:
        who, session = signed_in(request)
        result = None
        form: dict[str, str] = {}
        error = None
        tenant = q(request, "tenant")
        if request.method == "POST":
            _check_same_origin(request)
            form = await _form(request)
            check_csrf(form, session.csrf)
            tenant = form.get("tenant", "").strip() or None
            try:
                result = views.dry_run(broker, who, _dry_run_body(form, who))
            except BadInputError as exc:
                error = str(exc)
        data = views.policies(broker, who, tenant)
        recent = views.audit_timeline(
            broker, who, views.TimelineQuery(tenant=data["tenant"], action="release", limit=30)
        )["entries"]
        current = data["policies"][0]["policy"] if data["policies"] else data["default_policy"]
        return page(
            "policy.html",
            **ctx(
                request,
                who,
                session,
                data=data,
                recent=[e for e in recent if e["claims"] is not None],
                form=form,
                result=result,
                error=error,
                policy_text=form.get("policy") or json.dumps(current, indent=2),
            ),
        )

    async def activity_page(request: Request) -> Response:
        who, session = signed_in(request)
        data = views.activity(
            broker, who, q(request, "tenant"), q(request, "since"), q(request, "until"), metrics
        )
        chart = render.activity_chart(data["buckets"])
        latency = {k: render.latency_chart(v) for k, v in (data["latency"] or {}).items() if v["count"]}
        return page("activity.html", **ctx(request, who, session, data=data, chart=chart, latency=latency))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return _secure(Response("not found", status_code=404, media_type="text/plain"))
        body = resources.files("layerseal.broker.console").joinpath("static", name).read_bytes()
        response = Response(body, media_type=_STATIC[name])
        _secure(response)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    return [
        Route("/console", wrap(root), methods=["GET"]),
        Route("/console/login", wrap(login_form), methods=["GET"]),
        Route("/console/login", wrap(login), methods=["POST"]),
        Route("/console/logout", wrap(logout), methods=["POST"]),
        Route("/console/audit", wrap(audit_page), methods=["GET"]),
        Route("/console/audit/{entry:int}", wrap(entry_page), methods=["GET"]),
        Route("/console/keys", wrap(keys_page), methods=["GET"]),
        Route("/console/platforms", wrap(platforms_page), methods=["GET"]),
        Route("/console/policy", wrap(policy_page), methods=["GET", "POST"]),
        Route("/console/activity", wrap(activity_page), methods=["GET"]),
        Route("/console/static/{name}", static, methods=["GET"]),
    ]


def _cookie_path(request: Request) -> str:
    return "/" if _tls(request) else "/console"


def _dry_run_body(form: Mapping[str, str], who: Principal) -> dict[str, Any]:
    body: dict[str, Any] = {"policy": loads(form.get("policy", ""), "policy")}
    if form.get("tenant", "").strip():
        body["tenant"] = form["tenant"].strip()
    elif who.is_admin:
        raise BadInputError("tenant: expected a tenant for the dry-run (admin sessions span all tenants)")
    entry = form.get("audit_entry_id", "").strip() or form.get("audit_entry", "").strip()
    claims = form.get("claims", "").strip()
    if entry and not claims:
        if not entry.isdigit() or len(entry) > 12:
            raise BadInputError(f"audit entry: expected an entry id, seen {entry[:20]!r}")
        body["audit_entry"] = int(entry)
    elif claims:
        body["claims"] = loads(claims, "claims")
    return body


__all__ = ["CSP", "api_routes", "console_routes"]
