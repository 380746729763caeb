"""The attestation-token cache shared by the keyprovider processes of one user.

ocicrypt starts the keyprovider once per layer; attesting each time would cost a
round of evidence and two broker requests per layer.  A token is bound to the
``tee-pubkey`` it was issued for and the broker seals keys to that public key, so the
token is useless without its private key: both are cached together, in one JSON file of
mode 0600 inside a directory of mode 0700 owned by the user ($XDG_RUNTIME_DIR/layerseal
by default: tmpfs, per user, gone at logout).  An ``flock`` around read-attest-write
makes concurrent per-layer processes attest once.  Entries are dropped 30 s before the
token's ``exp`` and whenever the broker refuses the token.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerseal.errors import BadInputError, DeniedError
from layerseal.wire.b64 import b64url_decode
from layerseal.wire.jsonload import loads

MARGIN = 30.0  # seconds before exp at which a cached token is no longer used
_VERSION = 1


@dataclass(frozen=True, repr=False)
class CachedToken:
    """An attestation token with the enclave key it is bound to."""

    token: str
    exp: float
    tee_pubkey: Mapping[str, str]
    private_d: str

    def __repr__(self) -> str:  # the token and the key are secrets
        return f"CachedToken(exp={self.exp:.0f}, token=<redacted>)"

    def usable(self, now: float) -> bool:
        return self.exp - MARGIN > now


def token_exp(token: str) -> float:
    """The ``exp`` claim of a JWT, read without verifying (only to schedule re-attestation)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise BadInputError(f"attestation token: expected a JWT of 3 parts, seen {len(parts)}")
    claims = loads(b64url_decode(parts[1], "attestation token payload"), "attestation token payload")
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise BadInputError("attestation token: expected a numeric 'exp' claim, seen none")
    return float(exp)


def cache_key(url: str, tee: str, identity: str) -> str:
    """One entry per broker, TEE kind and attester identity (e.g. the sim platform directory)."""
    import hashlib  # OpenSSL's start-up (2-4 ms) is paid by a request that reaches the broker only

    return hashlib.sha256(f"{url}\0{tee}\0{identity}".encode()).hexdigest()[:32]


def default_directory(env: Mapping[str, str]) -> Path:
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "layerseal"
    import tempfile  # random, math, bisect...: only without $XDG_RUNTIME_DIR or to store a token

    return Path(tempfile.gettempdir()) / f"layerseal-{os.getuid()}"


class TokenCache:
    """Cache files ``token-<key>.json`` in one private directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _ensure_dir(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.directory.lstat()
        except OSError as exc:
            raise BadInputError(
                f"token cache {self.directory}: expected a creatable directory, seen {exc.strerror}"
            ) from exc
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise DeniedError(
                f"token cache {self.directory}: expected a directory of mode 0700 "
                f"owned by uid {os.getuid()}, "
                f"seen mode {oct(st.st_mode & 0o777)} owned by uid {st.st_uid}"
            )

    def path(self, key: str) -> Path:
        return self.directory / f"token-{key}.json"

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the entry's lock (blocks while another process attests for it)."""
        self._ensure_dir()
        fd = os.open(self.directory / f"token-{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def load(self, key: str, now: float) -> CachedToken | None:
        """The usable entry for *key*, or None (missing, expiring, damaged or loosely protected)."""
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                return None  # someone loosened it: do not trust it, it is overwritten on store
            raw = fh.read(65536)
        try:
            doc: Any = json.loads(raw)
            entry = CachedToken(
                token=str(doc["token"]),
                exp=float(doc["exp"]),
                tee_pubkey={str(k): str(v) for k, v in dict(doc["tee_pubkey"]).items()},
                private_d=str(doc["private_d"]),
            )
            if doc.get("version") != _VERSION:
                return None
        except (ValueError, KeyError, TypeError):
            return None
        return entry if entry.usable(now) else None

    def store(self, key: str, entry: CachedToken) -> None:
        """Write the entry atomically, mode 0600 from creation on."""
        import tempfile

        self._ensure_dir()
        doc = {
            "version": _VERSION,
            "token": entry.token,
            "exp": entry.exp,
            "tee_pubkey": dict(entry.tee_pubkey),
            "private_d": entry.private_d,
        }
        fd, tmp = tempfile.mkstemp(prefix=".token-", dir=self.directory)  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh)
            os.replace(tmp, self.path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def drop(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()
