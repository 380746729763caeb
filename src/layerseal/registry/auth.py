"""Authentication: ``WWW-Authenticate`` challenges, basic auth and the bearer-token flow.

The registry answers 401 with a challenge; for ``Bearer`` we ask the token server named
by ``realm`` for a token covering the request's scopes (docker token spec), cache it per
(realm, service, scopes) until shortly before it expires, and use it for every later
request with the same scopes.  Once the challenge is known, tokens for new scopes are
fetched before the request, saving a round trip.  Thread-safe.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from layerseal.errors import BadInputError, DeniedError, TransportError, expected_seen
from layerseal.registry.credentials import Credentials

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: tokens without ``expires_in`` live 60 s (token spec); refresh this long before expiry
_DEFAULT_EXPIRES = 60.0
_EXPIRY_MARGIN = 10.0
_MAX_TOKEN_BODY = 1024 * 1024


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header; scheme is lower case."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


def parse_challenges(value: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (RFC 7235): several challenges, quoted params with commas."""
    out: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            break
        m = _TOKEN.match(value, i)
        if m is None:
            raise BadInputError(
                f"WWW-Authenticate: expected a token at offset {i}, seen {value[i : i + 20]!r}"
            )
        token, j = m.group(), m.end()
        k = j
        while k < n and value[k] in " \t":
            k += 1
        if out and k < n and value[k] == "=":
            k += 1
            while k < n and value[k] in " \t":
                k += 1
            if k < n and value[k] == '"':
                k += 1
                chars: list[str] = []
                while k < n and value[k] != '"':
                    if value[k] == "\\" and k + 1 < n:
                        k += 1
                    chars.append(value[k])
                    k += 1
                if k >= n:
                    raise BadInputError("WWW-Authenticate: expected a closing '\"', seen end of header")
                param, i = "".join(chars), k + 1
            else:
                pm = _TOKEN.match(value, k)
                param, i = (pm.group(), pm.end()) if pm else ("", k)
            out[-1][1][token.lower()] = param
        else:
            out.append((token.lower(), {}))
            i = j
    return [Challenge(scheme, params) for scheme, params in out]


def repository_scope(repository: str, actions: Iterable[str]) -> str:
    return f"repository:{repository}:{','.join(actions)}"


def _covers(have: str, want: str) -> bool:
    """True when scope *have* grants at least what *want* asks (same resource, superset of actions)."""
    have_res, _, have_actions = have.rpartition(":")
    want_res, _, want_actions = want.rpartition(":")
    return have_res == want_res and set(want_actions.split(",")) <= set(have_actions.split(","))


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass
class _Token:
    value: str
    expires_at: float


class Authenticator:
    """Chooses the ``Authorization`` header for each request of one registry."""

    def __init__(
        self,
        registry: str,
        credentials: Callable[[], Credentials | None],
        send: Callable[[httpx.Request], httpx.Response],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._load_credentials = credentials
        self._send = send
        self._clock = clock
        self._lock = threading.RLock()
        self._creds_loaded = False
        self._creds: Credentials | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        #: how many tokens were fetched (tests check the cache with it)
        self.token_fetches = 0

    def _credentials(self) -> Credentials | None:
        with self._lock:
            if not self._creds_loaded:
                self._creds = self._load_credentials()
                self._creds_loaded = True
            return self._creds

    def authorization(self, scopes: tuple[str, ...]) -> str | None:
        """The header value for a request needing *scopes*, or None to try anonymously."""
        with self._lock:
            challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self._credentials()
            return basic_header(creds) if creds is not None else None
        if challenge.scheme == "bearer":
            return "Bearer " + self._token(challenge, scopes, refresh=False)
        return None

    def observe(self, response: httpx.Response) -> None:
        """Remember the challenge of a 401 (e.g. from the ``/v2/`` ping) without acting on it."""
        if response.status_code == 401:
            chosen = self._choose(response)
            if chosen is not None:
                with self._lock:
                    self._challenge = chosen

    def _choose(self, response: httpx.Response) -> Challenge | None:
        challenges: list[Challenge] = []
        for header in response.headers.get_list("www-authenticate"):
            challenges.extend(parse_challenges(header))
        for scheme in ("bearer", "basic"):
            for ch in challenges:
                if ch.scheme == scheme and (scheme == "basic" or ch.params.get("realm")):
                    return ch
        return None

    def on_unauthorized(
        self, response: httpx.Response, scopes: tuple[str, ...], what: str
    ) -> tuple[str, ...]:
        """Prepare to repeat a request that got 401; returns the scopes to use (may grow).

        Raises DeniedError when there is nothing new to try.
        """
        chosen = self._choose(response)
        if chosen is None:
            raise DeniedError(
                f"registry {self.registry}: {what}: expected a Basic or Bearer challenge with HTTP 401, "
                f"seen {response.headers.get('www-authenticate', 'none')!r}"
            )
        with self._lock:
            self._challenge = chosen
        if chosen.scheme == "basic":
            if self._credentials() is None:
                raise DeniedError(
                    f"registry {self.registry}: {what}: expected credentials for basic authentication, "
                    "seen none (give --creds or an auth file)"
                )
            return scopes
        wanted = list(scopes)
        for extra in chosen.params.get("scope", "").split():
            if not any(_covers(have, extra) for have in wanted):
                wanted.append(extra)
        merged = tuple(wanted)
        self._token(chosen, merged, refresh=True)
        return merged

    def _token(self, challenge: Challenge, scopes: tuple[str, ...], refresh: bool) -> str:
        realm = challenge.params.get("realm", "")
        service = challenge.params.get("service", "")
        key = (realm, service, tuple(sorted(scopes)))
        with self._lock:
            if not refresh:
                now = self._clock()
                for (c_realm, c_service, c_scopes), cached in self._tokens.items():
                    if (c_realm, c_service) != (realm, service) or cached.expires_at <= now:
                        continue
                    # a token for pull,push also serves a pull of the same repository
                    if all(any(_covers(have, want) for have in c_scopes) for want in scopes):
                        return cached.value
            token = self._fetch_token(realm, service, scopes)
            self._tokens[key] = token
            return token.value

    def _fetch_token(self, realm: str, service: str, scopes: tuple[str, ...]) -> _Token:
        if urlsplit(realm).scheme not in ("http", "https"):
            raise BadInputError(
                f"registry {self.registry}: token realm: expected an http(s) URL, seen {realm!r}"
            )
        creds = self._credentials()
        params: list[tuple[str, str | int | float | bool | None]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        headers = {"Accept": "application/json"}
        if creds is not None and creds.identity_token:
            form = dict(params[:1])
            form.update(
                grant_type="refresh_token",
                refresh_token=creds.identity_token,
                client_id="layerseal",
                scope=" ".join(scopes),
            )
            request = httpx.Request("POST", realm, data=form, headers=headers)
        else:
            if creds is not None:
                params.append(("account", creds.username))
                headers["Authorization"] = basic_header(creds)
            request = httpx.Request("GET", realm, params=params, headers=headers)
        self.token_fetches += 1
        log.debug("fetching token from %s for %s", realm, " ".join(scopes))
        response = self._send(request)
        host = urlsplit(realm).netloc
        who = f"user {creds.username!r}" if creds is not None else "anonymous access"
        if response.status_code in (401, 403):
            raise DeniedError(
                f"registry {self.registry}: token server {host}: expected a token for {who} "
                f"with scope {' '.join(scopes) or '(none)'}, seen HTTP {response.status_code}"
            )
        if response.status_code != 200:
            raise TransportError(
                f"registry {self.registry}: token server {host}: "
                + expected_seen("token request", "HTTP 200", f"HTTP {response.status_code}")
            )
        if len(response.content) > _MAX_TOKEN_BODY:
            raise TransportError(f"token server {host}: expected at most {_MAX_TOKEN_BODY} bytes, seen more")
        try:
            body: Any = response.json()
        except ValueError as exc:
            raise TransportError(f"token server {host}: expected a JSON answer, seen invalid JSON") from exc
        value = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise TransportError(f"token server {host}: expected a 'token' field, seen none")
        expires = body.get("expires_in")
        lifetime = float(expires) if isinstance(expires, int | float) and expires > 0 else _DEFAULT_EXPIRES
        return _Token(value, self._clock() + lifetime - min(_EXPIRY_MARGIN, lifetime / 2))
