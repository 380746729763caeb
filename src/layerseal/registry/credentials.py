"""Registry credentials: ``user:pass``, auth files (Docker, Podman) and credential helpers.

Lookup order follows containers-auth.json(5): an explicit ``--creds`` value, then an
explicit authfile, then ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``~/.config/containers/auth.json`` and ``$DOCKER_CONFIG/config.json`` (``~/.docker``).
In each file ``credHelpers`` for the host wins, then the most specific ``auths`` entry
(``host/namespace/repo`` before ``host``), then ``credsStore``.  Secrets never reach a
message or a log line.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerseal.errors import BadInputError, DeniedError
from layerseal.wire.b64 import b64decode
from layerseal.wire.jsonload import loads_object

log = logging.getLogger(__name__)

#: the key Docker writes Docker Hub credentials under
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_HELPER_TIMEOUT = 60.0


@dataclass(frozen=True, repr=False)
class Credentials:
    """A user name with a password, or an identity (refresh) token for the token server."""

    username: str
    password: str = ""
    identity_token: str | None = None

    def __repr__(self) -> str:  # secrets stay out of reprs, tracebacks and logs
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__


def parse_creds(text: str) -> Credentials:
    """``user:pass`` as given to ``--creds`` (the password may contain ':')."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise BadInputError("credentials: expected 'USER:PASSWORD', seen a value without 'USER:'")
    return Credentials(user, password)


def default_auth_files(env: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    files: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    config_home = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    files.append(config_home / "containers" / "auth.json")
    docker_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    files.append(docker_dir / "config.json")
    return files


def _normalize_key(key: str) -> str:
    """``https://host/v1/`` -> ``host``; ``host/ns/repo`` stays a path."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            # Docker's legacy keys carry an API path, never a repository path
            key = key.split("/", 1)[0]
            break
    key = key.rstrip("/")
    host, sep, path = key.partition("/")
    if host in _HUB_ALIASES:
        host = "docker.io"
    return host + sep + path


def _registry_key(registry: str) -> str:
    return "docker.io" if registry in _HUB_ALIASES else registry


def _decode_entry(entry: Any, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        raise BadInputError(f"{where}: expected an object, seen {type(entry).__name__}")
    identity = entry.get("identitytoken") or None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        expected = "base64 of 'user:password'"
        try:
            decoded = b64decode(auth, f"{where}: field 'auth'", expected=expected).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInputError(f"{where}: field 'auth': expected {expected}, seen bytes not UTF-8") from exc
        user, sep, password = decoded.partition(":")
        if not sep:
            raise BadInputError(f"{where}: field 'auth': expected base64 of 'user:password', seen no ':'")
        return Credentials(user, password, identity if isinstance(identity, str) else None)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and name and isinstance(secret, str):
        return Credentials(name, secret, identity if isinstance(identity, str) else None)
    if isinstance(identity, str):
        return Credentials("<token>", "", identity)
    return None


def run_credential_helper(name: str, server: str) -> Credentials | None:
    """``docker-credential-NAME get`` with *server* on stdin; None when it knows no credentials."""
    program = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as exc:
        raise BadInputError(f"credential helper: expected {program} on PATH, seen none") from exc
    except subprocess.TimeoutExpired as exc:
        raise DeniedError(
            f"credential helper {program}: expected an answer, seen none in {_HELPER_TIMEOUT:.0f}s"
        ) from exc
    if proc.returncode != 0:
        # stderr of helpers carries no secrets; stdout might, so it is never shown
        first = proc.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        message = first[0][:200] if first else ""
        if "credentials not found" in (message + proc.stdout.decode("utf-8", "replace")).lower():
            return None
        raise DeniedError(
            f"credential helper {program} for {server}: "
            f"expected exit status 0, seen {proc.returncode} ({message})"
        )
    # the answer holds the secret: errors name its shape, never its text
    expected = "JSON with 'Username' and 'Secret'"
    data = loads_object(proc.stdout, f"credential helper {program}", expected=expected)
    user, secret = data.get("Username"), data.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str):
        raise BadInputError(f"credential helper {program}: expected {expected} strings, seen something else")
    if user == "<token>":
        return Credentials(user, "", secret)
    return Credentials(user, secret)


def _helper_server(registry: str) -> str:
    return DOCKER_HUB_AUTH_KEY if _registry_key(registry) == "docker.io" else registry


def credentials_from_file(path: Path, registry: str, repository: str | None = None) -> Credentials | None:
    """Credentials for *registry* (and optionally *repository*) from one auth file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInputError(f"auth file {path}: expected a readable file, seen {type(exc).__name__}") from exc
    data = loads_object(raw, f"auth file {path}")
    key = _registry_key(registry)
    helpers = data.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for name, helper in helpers.items():
            if _normalize_key(str(name)) == key and isinstance(helper, str):
                return run_credential_helper(helper, _helper_server(registry))
    auths = data.get("auths") or {}
    if isinstance(auths, dict):
        wanted = [f"{key}/{repository}"] if repository else []
        if repository:
            parts = repository.split("/")
            wanted += [f"{key}/{'/'.join(parts[:i])}" for i in range(len(parts) - 1, 0, -1)]
        wanted.append(key)
        normalized = {_normalize_key(str(k)): v for k, v in auths.items()}
        for candidate in wanted:
            if candidate in normalized:
                found = _decode_entry(normalized[candidate], f"auth file {path}: auths[{candidate!r}]")
                if found is not None:
                    return found
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        return run_credential_helper(store, _helper_server(registry))
    return None


def resolve_credentials(
    registry: str,
    repository: str | None = None,
    *,
    creds: str | None = None,
    authfile: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials | None:
    """The credentials to use for *registry*, or None for anonymous access."""
    if creds is not None:
        return parse_creds(creds)
    if authfile is not None:
        path = Path(authfile)
        if not path.is_file():
            raise BadInputError(f"auth file: expected an existing file, seen {authfile!r}")
        return credentials_from_file(path, registry, repository)
    for path in default_auth_files(env):
        found = credentials_from_file(path, registry, repository)
        if found is not None:
            log.debug("using credentials for %s from %s", registry, path)
            return found
    return None
