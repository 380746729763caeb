"""Requests to one registry: base URL, authentication, retries and error mapping.

Every API call goes through :meth:`RegistrySession.request`, which adds authentication,
answers a 401 challenge (once) and lets the client's :class:`Retrier` decide about
connection errors and 5xx/429 answers.  :meth:`fail` turns an unexpected answer into
the error family the README's exit table names.  One session is safe to share between
threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import httpx

from layerseal.errors import (
    BadInputError,
    DeniedError,
    LayersealError,
    NotFoundError,
    TransportError,
    expected_seen,
)
from layerseal.registry.attempts import Retrier
from layerseal.registry.auth import Authenticator, repository_scope
from layerseal.registry.connection import open_http
from layerseal.registry.credentials import Credentials, resolve_credentials
from layerseal.registry.options import RegistryOptions
from layerseal.registry.reference import DOCKER_HUB, DOCKER_HUB_API
from layerseal.registry.retry import NetworkFailure, classify_network_error
from layerseal.wire.jsonload import object_or_none

log = logging.getLogger(__name__)

PULL = ("pull",)
PUSH = ("pull", "push")
_MAX_ERROR_BODY = 64 * 1024


class RegistrySession:
    """Authenticated, retried requests to the distribution API of one registry host."""

    def __init__(
        self,
        registry: str,
        options: RegistryOptions,
        *,
        repository: str | None = None,
        push: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = registry
        self.host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        self.options = options
        self.retrier = Retrier(options.retry, options.deadline, sleep)
        self._repository_hint = repository
        # a destination asks for pull,push from its first request, so one token serves it all
        self._push = push
        self._lock = threading.Lock()
        self._base: str | None = None
        self._http = open_http(options)
        self.auth = Authenticator(registry, self._load_credentials, self.send_plain)

    def _load_credentials(self) -> Credentials | None:
        return resolve_credentials(
            self.registry, self._repository_hint, creds=self.options.creds, authfile=self.options.authfile
        )

    def close(self) -> None:
        self._http.close()

    def where(self, repository: str | None) -> str:
        return f"registry {self.registry}" + (f", repository {repository}" if repository else "")

    def base_url(self) -> str:
        """``https://HOST`` or, with ``tls_verify=False`` and no TLS listener, ``http://HOST``."""
        with self._lock:
            if self._base is None:
                self._base = self._probe_scheme()
            return self._base

    def _probe_scheme(self) -> str:
        if self.options.tls_verify:
            return f"https://{self.host}"
        try:
            response = self._http.get(f"https://{self.host}/v2/")
        except httpx.TransportError:
            log.debug("registry %s: no TLS listener, using plain HTTP", self.registry)
            base = f"http://{self.host}"
            response = self.send_plain(httpx.Request("GET", f"{base}/v2/"), what="ping")
            self.auth.observe(response)
            return base
        self.auth.observe(response)
        return f"https://{self.host}"

    def network_failure(self, exc: BaseException, host: str | None = None) -> NetworkFailure:
        side = self.options.side
        return classify_network_error(
            exc, host or self.host, f"--{side}-tls-verify" if side else "--tls-verify"
        )

    def ping(self) -> None:
        """Check that the registry speaks the v2 API (401 counts: auth comes later)."""
        response = self.send_plain(httpx.Request("GET", self.base_url() + "/v2/"), what="ping /v2/")
        self.auth.observe(response)
        if response.status_code not in (200, 401):
            raise TransportError(
                f"{self.where(None)}: "
                + expected_seen("GET /v2/", "HTTP 200 or 401", f"HTTP {response.status_code}")
            )

    def send_plain(self, request: httpx.Request, what: str = "token request") -> httpx.Response:
        """Send without registry auth, with retries; the body is read."""
        tries = self.retrier.attempts(f"{self.where(None)}: {what} to {request.url.host}")
        while True:
            tries.start()
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                failure = self.network_failure(exc, request.url.netloc.decode())
                if tries.after_network_error(failure):
                    continue
                raise TransportError(f"{tries.where}: {failure.message()}") from exc
            if tries.after_status(response):
                continue
            return response

    def request(
        self,
        method: str,
        url: str,
        repository: str,
        actions: tuple[str, ...],
        what: str,
        *,
        expect: tuple[int, ...] = (),
        headers: dict[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        idempotent: bool = True,
        extra_scopes: tuple[str, ...] = (),
        max_attempts: int | None = None,
    ) -> httpx.Response:
        """One API call with auth and retries; *url* is a path below the base or absolute.

        With *expect*, any other status raises the error :meth:`fail` chooses.

        A body given as an iterator is streamed and therefore sent at most once: when
        the registry answers it with 401, the credentials are refreshed for the next
        request and a TransportError says the body must be produced again.
        """
        if not url.startswith(("http://", "https://")):
            url = self.base_url() + url
        if self._push and repository == self._repository_hint and actions == PULL:
            actions = PUSH
        scopes = (repository_scope(repository, actions), *extra_scopes)
        where = f"{self.where(repository)}: {what}"
        tries = self.retrier.attempts(
            where, limit=max_attempts, replayable=content is None or isinstance(content, bytes)
        )
        auth_retried = False
        while True:
            tries.start()
            request_headers = dict(headers or {})
            authorization = self.auth.authorization(scopes)
            if authorization is not None:
                request_headers["Authorization"] = authorization
            request = self._http.build_request(method, url, headers=request_headers, content=content)
            try:
                response = self._http.send(request, stream=stream, follow_redirects=method in ("GET", "HEAD"))
            except httpx.TransportError as exc:
                failure = self.network_failure(exc)
                if tries.after_request_error(exc, failure, idempotent):
                    continue
                again = f" (after {tries.number} attempts)" if tries.number > 1 else ""
                seen = failure.cause + again + (f": {failure.fix}" if failure.fix else "")
                raise TransportError(
                    f"{self.where(repository)}: " + expected_seen(what, "an HTTP answer", seen)
                ) from exc
            if response.status_code == 401 and not auth_retried:
                response.close()
                scopes = self.auth.on_unauthorized(response, scopes, f"repository {repository}: {what}")
                auth_retried = True
                if tries.after_unauthorized():
                    continue
                seen = "HTTP 401 (authenticate again) after the streamed body was sent"
                raise TransportError(
                    f"{self.where(repository)}: {expected_seen(what, 'an answer to the body', seen)}; "
                    "a stream is sent once: the transfer must start over, with the new credentials"
                )
            if tries.after_status(response, idempotent=idempotent):
                continue
            if expect and response.status_code not in expect:
                raise self.fail(response, repository, what, "HTTP " + " or ".join(map(str, expect)))
            return response

    def fail(self, response: httpx.Response, repository: str, what: str, expected: str) -> LayersealError:
        """The error for an unexpected status; reads (a bounded part of) the body for details."""
        detail = ""
        try:
            body = self.read_limited(response, _MAX_ERROR_BODY, what, truncate=True)
            errors = (object_or_none(body) or {}).get("errors")
            if isinstance(errors, list):
                parts = [
                    f"{e.get('code', '?')}: {e.get('message', '')}" for e in errors[:3] if isinstance(e, dict)
                ]
                detail = "; ".join(parts)
        except (httpx.HTTPError, LayersealError):
            pass
        finally:
            response.close()
        status = response.status_code
        seen = f"HTTP {status}" + (f" ({detail})" if detail else "")
        message = f"{self.where(repository)}: " + expected_seen(what, expected, seen)
        if status in (401, 403):
            return DeniedError(
                message + " - access denied: check the credentials and that the repository exists"
            )
        if status == 404:
            return NotFoundError(message)
        if 400 <= status < 500 and status not in (408, 429):
            return BadInputError(message)
        return TransportError(message)

    def read_limited(self, response: httpx.Response, limit: int, what: str, truncate: bool = False) -> bytes:
        """The body of a streamed response, refusing (or truncating) more than *limit* bytes."""
        declared = response.headers.get("content-length")
        if not truncate and declared and declared.isdigit() and int(declared) > limit:
            raise BadInputError(f"{what}: expected at most {limit} bytes, seen Content-Length {declared}")
        buf = bytearray()
        for chunk in response.iter_bytes():
            buf += chunk
            if len(buf) > limit:
                if truncate:
                    return bytes(buf[:limit])
                raise BadInputError(f"{what}: expected at most {limit} bytes, seen more")
        return bytes(buf)

    def get_bounded(
        self, url: str, repository: str, what: str, limit: int, headers: dict[str, str]
    ) -> tuple[httpx.Response, bytes]:
        """GET a small document fully, retrying when the connection breaks while reading it."""
        tries = self.retrier.attempts(f"{self.where(repository)}: {what}")
        while True:
            tries.start()
            response = self.request(
                "GET", url, repository, PULL, what, expect=(200,), headers=headers, stream=True
            )
            try:
                return response, self.read_limited(response, limit, tries.where)
            except httpx.TransportError as exc:
                failure = self.network_failure(exc)
                if tries.after_network_error(failure):
                    continue
                raise TransportError(f"{tries.where}: reading the body failed: {failure.message()}") from exc
            finally:
                response.close()

    def location(self, response: httpx.Response, repository: str, what: str) -> str:
        """The absolute URL of a response's ``Location`` header (upload sessions)."""
        location = response.headers.get("location")
        if not location:
            raise TransportError(f"{self.where(repository)}: {what}: expected a Location header, seen none")
        return str(response.url.join(location))
