"""Low-level OCI distribution-spec v1.1 client for one registry, on httpx.

Every request goes through :meth:`RegistryClient._request`, which adds authentication,
repeats a 401 once after answering the challenge, and retries connection errors and
5xx/429 answers with backoff (honouring ``Retry-After``).  Upload requests that must not
be applied twice are retried only when the server cannot have acted on them.  Blobs are
streamed in the pieces the socket delivers (small ones joined), verified against digest
and size, and an interrupted download continues with ``Range`` from where it stopped.
One client is safe to share between threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpcore._sync.http11 as _h11conn
import httpx

# Blob bodies are megabytes: reading them 64 KiB at a time spends more CPU in the HTTP
# parser than in hashing (measured: 10 x 50 MB pull 1.65 s -> 1.2 s).  httpcore keeps its
# read size in a class attribute; if a future release drops it, nothing breaks.
if hasattr(_h11conn.HTTP11Connection, "READ_NUM_BYTES"):
    _h11conn.HTTP11Connection.READ_NUM_BYTES = 1024 * 1024

from layerseal.errors import (
    BadInputError,
    DeniedError,
    IntegrityError,
    LayersealError,
    NotFoundError,
    TransportError,
    expected_seen,
)
from layerseal.image import jsonutil
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest, DigestVerifier
from layerseal.image.manifest import MAX_MANIFEST_BYTES, Index, detect_media_type
from layerseal.registry.auth import Authenticator, repository_scope
from layerseal.registry.credentials import Credentials, resolve_credentials
from layerseal.registry.options import RegistryOptions
from layerseal.registry.reference import DOCKER_HUB, DOCKER_HUB_API, validate_repository
from layerseal.registry.retry import (
    NetworkFailure,
    classify_network_error,
    format_duration,
    is_retriable_status,
)
from layerseal.streams import Background

log = logging.getLogger(__name__)

#: every manifest type layerseal reads, most preferred first
MANIFEST_ACCEPT = ", ".join((mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST))
_MAX_ERROR_BODY = 64 * 1024
_MAX_LIST_BODY = 16 * 1024 * 1024
_MAX_PAGES = 10_000
# Reads at least this big go downstream as they arrived; smaller ones are joined first,
# so the cipher and hash threads see few, large pieces without a re-slicing copy.
_MIN_PIECE = 256 * 1024

_PULL = ("pull",)
_PUSH = ("pull", "push")
# errors that prove the request never reached the server, so repeating it is always safe
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _content_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "")
    return value.split(";", 1)[0].strip()


def _digest_header(response: httpx.Response, what: str) -> Digest | None:
    value = response.headers.get("docker-content-digest")
    if not value:
        return None
    try:
        return Digest.parse(value.strip())
    except BadInputError as exc:
        raise TransportError(f"{what}: header Docker-Content-Digest: {exc}") from exc


def _is_digest(reference: str) -> bool:
    return ":" in reference


class RegistryClient:
    """The distribution API of one registry host (``registry`` as users write it)."""

    def __init__(
        self,
        registry: str,
        options: RegistryOptions | None = None,
        *,
        repository: str | None = None,
        push: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = registry
        self.host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        self.options = options = options or RegistryOptions()
        self._sleep = sleep
        self._repository_hint = repository
        # a destination asks for pull,push from its first request, so one token serves it all
        self._push = push
        self._lock = threading.Lock()
        self._base: str | None = None
        verify: ssl.SSLContext | bool = True
        if not options.tls_verify:
            verify = False
        elif options.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=options.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise BadInputError(
                    f"CA file {options.ca_file!r}: expected a readable PEM bundle, seen {type(exc).__name__}"
                ) from exc
        limits = httpx.Limits(
            max_connections=options.max_connections, max_keepalive_connections=options.max_connections
        )
        self._http = httpx.Client(
            verify=verify,
            transport=options.transport,
            limits=limits,
            timeout=httpx.Timeout(options.timeout, connect=min(options.timeout, options.connect_timeout)),
            headers={"User-Agent": options.user_agent},
        )
        self.auth = Authenticator(registry, self._load_credentials, self._send_plain)

    # ----------------------------------------------------------------- plumbing

    def _load_credentials(self) -> Credentials | None:
        return resolve_credentials(
            self.registry, self._repository_hint, creds=self.options.creds, authfile=self.options.authfile
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self, repository: str | None) -> str:
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
            response = self._send_plain(httpx.Request("GET", f"{base}/v2/"), what="ping")
            self.auth.observe(response)
            return base
        self.auth.observe(response)
        return f"https://{self.host}"

    def _network_failure(self, exc: BaseException, host: str | None = None) -> NetworkFailure:
        side = self.options.side
        return classify_network_error(
            exc, host or self.host, f"--{side}-tls-verify" if side else "--tls-verify"
        )

    def _check_deadline(self, what: str) -> None:
        deadline = self.options.deadline
        if deadline is not None and deadline.remaining() <= 0:
            raise TransportError(f"{what}: expected to finish within {deadline.describe()}, seen it pass")

    def _wait(
        self, delay: float, what: str, reason: str, attempt: int, limit: int, announce: bool = False
    ) -> None:
        """Sleep before attempt *attempt* + 1, unless that would pass the command's deadline.

        Long waits (a server's ``Retry-After``) are announced on stderr, even under ``-q``:
        a command that seems to hang for minutes must say why.
        """
        deadline = self.options.deadline
        if deadline is not None and delay > deadline.remaining():
            left = format_duration(max(0.0, round(deadline.remaining(), 1)))
            raise TransportError(
                f"{what}: {reason}; waiting {format_duration(delay)} before trying again would pass "
                f"{deadline.describe()} ({left} left): giving up"
            )
        if announce or delay >= 5:
            log.warning(
                "%s: %s; waiting %s before attempt %d of %d",
                what,
                reason,
                format_duration(round(delay, 1)),
                attempt + 1,
                limit,
            )
        self._sleep(delay)

    def _send_plain(self, request: httpx.Request, what: str = "token request") -> httpx.Response:
        """Send without registry auth, with retries; the body is read."""
        policy = self.options.retry
        where = f"{self._where(None)}: {what} to {request.url.host}"
        attempt = 0
        while True:
            attempt += 1
            self._check_deadline(where)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                failure = self._network_failure(exc, request.url.netloc.decode())
                if failure.retriable and attempt < policy.max_attempts:
                    self._wait(policy.backoff(attempt), where, failure.cause, attempt, policy.max_attempts)
                    continue
                raise TransportError(f"{where}: {failure.message()}") from exc
            if is_retriable_status(response.status_code) and attempt < policy.max_attempts:
                retry_after = response.headers.get("retry-after")
                self._wait(
                    policy.delay(attempt, retry_after),
                    where,
                    f"HTTP {response.status_code}" + (f", Retry-After {retry_after}" if retry_after else ""),
                    attempt,
                    policy.max_attempts,
                    announce=retry_after is not None,
                )
                continue
            return response

    def _request(
        self,
        method: str,
        url: str,
        *,
        repository: str,
        actions: tuple[str, ...],
        what: str,
        headers: dict[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        idempotent: bool = True,
        extra_scopes: tuple[str, ...] = (),
        max_attempts: int | None = None,
    ) -> httpx.Response:
        """One API call with auth and retries; *url* is a path below the base or absolute."""
        if not url.startswith(("http://", "https://")):
            url = self.base_url() + url
        if self._push and repository == self._repository_hint and actions == _PULL:
            actions = _PUSH
        scopes = (repository_scope(repository, actions), *extra_scopes)
        limit = max_attempts or self.options.retry.max_attempts
        policy = self.options.retry
        auth_retried = False
        attempt = 0
        while True:
            attempt += 1
            request_headers = dict(headers or {})
            authorization = self.auth.authorization(scopes)
            if authorization is not None:
                request_headers["Authorization"] = authorization
            request = self._http.build_request(method, url, headers=request_headers, content=content)
            where = f"{self._where(repository)}: {what}"
            self._check_deadline(where)
            try:
                response = self._http.send(request, stream=stream, follow_redirects=method in ("GET", "HEAD"))
            except httpx.TransportError as exc:
                failure = self._network_failure(exc)
                if failure.retriable and attempt < limit and (idempotent or isinstance(exc, _NOT_SENT)):
                    log.debug("%s %s: %s, retrying", method, what, failure.cause)
                    self._wait(policy.backoff(attempt), where, failure.cause, attempt, limit)
                    continue
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                seen = failure.cause + tries + (f": {failure.fix}" if failure.fix else "")
                raise TransportError(
                    f"{self._where(repository)}: " + expected_seen(what, "an HTTP answer", seen)
                ) from exc
            if response.status_code == 401 and not auth_retried:
                response.close()
                scopes = self.auth.on_unauthorized(response, scopes, f"repository {repository}: {what}")
                auth_retried = True
                attempt -= 1
                continue
            if is_retriable_status(response.status_code, idempotent) and attempt < limit:
                retry_after = response.headers.get("retry-after")
                delay = policy.delay(attempt, retry_after)
                log.debug("%s %s: HTTP %d, retrying in %.1fs", method, what, response.status_code, delay)
                response.close()
                self._wait(
                    delay,
                    where,
                    f"HTTP {response.status_code}" + (f", Retry-After {retry_after}" if retry_after else ""),
                    attempt,
                    limit,
                    announce=retry_after is not None,
                )
                continue
            return response

    def _fail(self, response: httpx.Response, repository: str, what: str, expected: str) -> LayersealError:
        """The error for an unexpected status; reads (a bounded part of) the body for details."""
        detail = ""
        try:
            body = self._read_limited(response, _MAX_ERROR_BODY, what, truncate=True)
            errors = json.loads(body).get("errors") if body else None
            if isinstance(errors, list):
                parts = [
                    f"{e.get('code', '?')}: {e.get('message', '')}" for e in errors[:3] if isinstance(e, dict)
                ]
                detail = "; ".join(parts)
        except (ValueError, AttributeError, httpx.HTTPError, LayersealError):
            pass
        finally:
            response.close()
        status = response.status_code
        seen = f"HTTP {status}" + (f" ({detail})" if detail else "")
        message = f"{self._where(repository)}: " + expected_seen(what, expected, seen)
        if status in (401, 403):
            return DeniedError(
                message + " - access denied: check the credentials and that the repository exists"
            )
        if status == 404:
            return NotFoundError(message)
        if 400 <= status < 500 and status not in (408, 429):
            return BadInputError(message)
        return TransportError(message)

    def _read_limited(self, response: httpx.Response, limit: int, what: str, truncate: bool = False) -> bytes:
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

    def _get_bounded(
        self, url: str, repository: str, what: str, limit: int, headers: dict[str, str]
    ) -> tuple[httpx.Response, bytes]:
        """GET a small document fully, retrying when the connection breaks while reading it."""
        policy = self.options.retry
        attempt = 0
        while True:
            attempt += 1
            response = self._request(
                "GET", url, repository=repository, actions=_PULL, what=what, headers=headers, stream=True
            )
            try:
                if response.status_code != 200:
                    raise self._fail(response, repository, what, "HTTP 200")
                return response, self._read_limited(response, limit, f"{self._where(repository)}: {what}")
            except httpx.TransportError as exc:
                failure = self._network_failure(exc)
                if attempt < policy.max_attempts:
                    self._wait(
                        policy.backoff(attempt),
                        f"{self._where(repository)}: {what}",
                        failure.cause,
                        attempt,
                        policy.max_attempts,
                    )
                    continue
                raise TransportError(
                    f"{self._where(repository)}: {what}: reading the body failed: {failure.message()}"
                ) from exc
            finally:
                response.close()

    # ----------------------------------------------------------------- API

    def ping(self) -> None:
        """Check that the registry speaks the v2 API (401 counts: auth comes later)."""
        response = self._send_plain(httpx.Request("GET", self.base_url() + "/v2/"), what="ping /v2/")
        self.auth.observe(response)
        if response.status_code not in (200, 401):
            raise TransportError(
                f"{self._where(None)}: "
                + expected_seen("GET /v2/", "HTTP 200 or 401", f"HTTP {response.status_code}")
            )

    def get_manifest(
        self, repository: str, reference: str, accept: str = MANIFEST_ACCEPT
    ) -> tuple[bytes, str, Digest]:
        """Manifest bytes, media type and digest; the digest is verified when known."""
        validate_repository(repository)
        what = f"manifest {reference}"
        response, data = self._get_bounded(
            f"/v2/{repository}/manifests/{reference}",
            repository,
            what,
            MAX_MANIFEST_BYTES,
            {"Accept": accept},
        )
        where = f"{self._where(repository)}: {what}"
        expected = Digest.parse(reference) if _is_digest(reference) else _digest_header(response, where)
        actual = Digest.of(data, expected.algorithm if expected else "sha256")
        if expected is not None and actual != expected:
            raise IntegrityError(f"{where}: expected digest {expected}, seen {actual}")
        media_type = detect_media_type(data, _content_type(response) or None, where)
        return data, media_type, actual

    def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """The descriptor of a manifest, or None when the registry does not have it."""
        what = f"manifest {reference} (HEAD)"
        response = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            actions=_PULL,
            what=what,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, repository, what, "HTTP 200 or 404")
        digest = _digest_header(response, what)
        length = response.headers.get("content-length", "")
        if digest is None or not length.isdigit():
            data, media_type, digest = self.get_manifest(repository, reference)
            return Descriptor(media_type, digest, len(data))
        return Descriptor(_content_type(response) or mt.OCI_MANIFEST, digest, int(length))

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> Descriptor:
        """Upload a manifest under a tag or its digest; checks the digest the registry reports."""
        validate_repository(repository)
        what = f"manifest {reference} (PUT)"
        if len(data) > MAX_MANIFEST_BYTES:
            raise BadInputError(f"{what}: expected at most {MAX_MANIFEST_BYTES} bytes, seen {len(data)}")
        digest = Digest.of(data, Digest.parse(reference).algorithm if _is_digest(reference) else "sha256")
        if _is_digest(reference) and str(digest) != reference:
            raise IntegrityError(f"{what}: expected manifest bytes with digest {reference}, seen {digest}")
        response = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            actions=_PUSH,
            what=what,
            headers={"Content-Type": media_type},
            content=data,
        )
        if response.status_code != 201:
            raise self._fail(response, repository, what, "HTTP 201")
        reported = _digest_header(response, what)
        if reported is not None and reported.algorithm == digest.algorithm and reported != digest:
            raise IntegrityError(
                f"{self._where(repository)}: {what}: expected digest {digest}, seen {reported}"
            )
        return Descriptor(media_type, digest, len(data))

    def delete_manifest(self, repository: str, digest: Digest) -> None:
        what = f"manifest {digest} (DELETE)"
        response = self._request(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            repository=repository,
            actions=("delete",),
            what=what,
        )
        if response.status_code not in (200, 202):
            raise self._fail(response, repository, what, "HTTP 202")

    def stat_blob(self, repository: str, digest: Digest) -> int | None:
        """The size of a blob the registry holds, or None when it does not."""
        what = f"blob {digest} (HEAD)"
        response = self._request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", repository=repository, actions=_PULL, what=what
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, repository, what, "HTTP 200 or 404")
        length = response.headers.get("content-length", "")
        return int(length) if length.isdigit() else -1

    def iter_blob(self, repository: str, desc: Descriptor) -> Iterator[bytes]:
        """Stream a blob, verifying digest and size; resumes with ``Range`` after a broken connection.

        Raises IntegrityError from the iterator when the bytes do not match *desc*.
        """
        where = f"{self._where(repository)}: blob {desc.digest}"
        verifier = DigestVerifier(desc.digest, desc.size, what=where)
        policy = self.options.retry
        failures = 0
        # received and hashed, not yet handed out: less than _MIN_PIECE
        parts: list[bytes] = []
        buffered = 0
        while True:
            offset = verifier.size
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            response = self._request(
                "GET",
                f"/v2/{repository}/blobs/{desc.digest}",
                repository=repository,
                actions=_PULL,
                what=f"blob {desc.digest}",
                headers=headers,
                stream=True,
            )
            try:
                skip = self._check_blob_response(response, repository, desc, offset)
                # iter_bytes (not iter_raw) undoes a Content-Encoding a proxy may add despite our header;
                # no chunk size, so every byte read counts towards a resume offset at once
                for piece in response.iter_bytes():
                    if skip:
                        dropped = min(skip, len(piece))
                        piece, skip = piece[dropped:], skip - dropped
                    verifier.update(piece)
                    if not parts and len(piece) >= _MIN_PIECE:
                        yield piece  # most reads: handed on as they are, no copy
                        continue
                    parts.append(piece)
                    buffered += len(piece)
                    if buffered >= _MIN_PIECE:
                        yield b"".join(parts)
                        parts.clear()
                        buffered = 0
            except httpx.TransportError as exc:
                failures = 1 if verifier.size > offset else failures + 1
                failure = self._network_failure(exc)
                if failures < policy.max_attempts and verifier.size < desc.size:
                    log.debug("%s: %s after %d bytes, resuming", where, type(exc).__name__, verifier.size)
                    self._wait(policy.backoff(failures), where, failure.cause, failures, policy.max_attempts)
                    continue
                seen = f"{verifier.size} before {failure.message()}"
                raise TransportError(f"{where}: expected {desc.size} bytes, seen {seen}") from exc
            except httpx.DecodingError as exc:
                raise TransportError(f"{where}: expected a decodable body, seen {exc}") from exc
            finally:
                response.close()
            verifier.verify()
            if parts:
                yield b"".join(parts)
            return

    def _check_blob_response(
        self, response: httpx.Response, repository: str, desc: Descriptor, offset: int
    ) -> int:
        """Validate the status of a (ranged) blob GET; returns how many leading bytes to drop."""
        what = f"blob {desc.digest}"
        where = f"{self._where(repository)}: {what}"
        length = response.headers.get("content-length", "")
        if response.status_code == 200:
            encoded = response.headers.get("content-encoding", "identity") != "identity"
            if length.isdigit() and not encoded and int(length) != desc.size:
                raise IntegrityError(f"{where}: expected {desc.size} bytes, seen Content-Length {length}")
            return offset  # the server ignored Range: drop what we already have
        if response.status_code == 206 and offset:
            start = response.headers.get("content-range", "").removeprefix("bytes ").split("-", 1)[0]
            if start != str(offset):
                raise TransportError(
                    f"{where}: " + expected_seen("Content-Range start", offset, start or "none")
                )
            return 0
        raise self._fail(response, repository, what, "HTTP 200" + (" or 206" if offset else ""))

    def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Cross-repository mount; False when the registry could not mount (nothing is left behind)."""
        validate_repository(from_repository)
        what = f"mount of blob {digest} from {from_repository}"
        response = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/?mount={digest}&from={from_repository}",
            repository=repository,
            actions=_PUSH,
            what=what,
            extra_scopes=(repository_scope(from_repository, _PULL),),
        )
        if response.status_code == 201:
            return True
        if response.status_code == 202:
            # the registry opened an upload session instead; we do not need it
            location = response.headers.get("location")
            if location:
                self._cancel_upload(repository, str(response.url.join(location)))
            return False
        raise self._fail(response, repository, what, "HTTP 201 or 202")

    # ----------------------------------------------------------------- uploads

    def _start_upload(self, repository: str) -> tuple[str, int]:
        """Open an upload session: its URL, and the registry's smallest chunk (``OCI-Chunk-Min-Length``)."""
        what = "blob upload (POST)"
        response = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            repository=repository,
            actions=_PUSH,
            what=what,
            headers={"Content-Length": "0"},
        )
        if response.status_code != 202:
            raise self._fail(response, repository, what, "HTTP 202")
        minimum = response.headers.get("oci-chunk-min-length", "")
        return self._location(response, repository, what), int(minimum) if minimum.isdigit() else 0

    def _location(self, response: httpx.Response, repository: str, what: str) -> str:
        location = response.headers.get("location")
        if not location:
            raise TransportError(f"{self._where(repository)}: {what}: expected a Location header, seen none")
        return str(response.url.join(location))

    def _cancel_upload(self, repository: str, location: str) -> None:
        try:
            response = self._request(
                "DELETE", location, repository=repository, actions=_PUSH, what="cancel upload", max_attempts=1
            )
            response.close()
        except (LayersealError, httpx.HTTPError) as exc:
            log.debug("%s: cancelling upload failed: %s", self._where(repository), type(exc).__name__)

    def upload_blob(
        self,
        repository: str,
        chunks: Iterable[bytes],
        expected: Descriptor | None = None,
        *,
        verified: bool = False,
    ) -> tuple[Digest, int]:
        """Upload a stream (digest computed on the way) and commit it only after a clean end.

        Blobs up to ``upload_chunk_size`` go in the closing PUT.  Larger ones go in one
        streamed PATCH, or, with ``upload_chunk_limit`` set, in PATCHes of that many bytes
        (each resumed from the offset the registry reports after a failure).  The upload
        session is deleted when anything fails.
        """
        validate_repository(repository)
        algorithm = expected.digest.algorithm if expected is not None else "sha256"
        hasher = hashlib.new(algorithm)
        limit = self.options.upload_chunk_limit
        # with a limit, no request body may exceed it: not even a single-PUT upload's
        segment = min(self.options.upload_chunk_size, limit) if limit else self.options.upload_chunk_size
        location, min_chunk = self._start_upload(repository)
        where = f"{self._where(repository)}: blob upload"
        size = 0
        try:
            buf = bytearray()
            iterator = iter(chunks)
            exhausted = False

            # a verified source raises unless its bytes match *expected*; the registry checks too
            trust = verified and expected is not None

            hashing = Background(hasher.update)  # overlaps with sending

            def take(chunk: bytes) -> None:
                nonlocal size
                if not trust:
                    hashing.update(chunk)
                size += len(chunk)
                if expected is not None and size > expected.size:
                    raise IntegrityError(
                        f"{where} of {expected.digest}: expected {expected.size} bytes, seen more"
                    )

            while len(buf) < segment:
                try:
                    chunk = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                take(chunk)
                buf += chunk
            tail = bytes(buf)
            if not exhausted and limit is not None:
                location, tail = self._patch_chunks(
                    repository, location, tail, iterator, take, max(limit, min_chunk)
                )
            elif not exhausted:
                # One streamed PATCH for the rest: a request per chunk costs the registry a
                # round trip and a hash-state save each, which halves throughput.
                def body() -> Iterator[bytes]:
                    yield tail
                    for chunk in iterator:
                        take(chunk)
                        yield chunk

                location = self._patch_stream(repository, location, body())
                tail = b""
            hashing.wait()
            digest = (
                expected.digest if trust and expected is not None else Digest(algorithm, hasher.hexdigest())
            )
            if expected is not None and (digest != expected.digest or size != expected.size):
                raise IntegrityError(
                    f"{where}: "
                    + expected_seen(
                        "content", f"{expected.digest} ({expected.size} bytes)", f"{digest} ({size} bytes)"
                    )
                )
            self._finish(repository, location, digest, size, tail)
            return digest, size
        except BaseException:
            self._cancel_upload(repository, location)
            raise

    def _send_patch(
        self,
        repository: str,
        location: str,
        what: str,
        content: bytes | Iterator[bytes],
        headers: dict[str, str],
    ) -> httpx.Response:
        # never repeated here: a consumed stream cannot be sent again, and a chunk is sent
        # again only from the offset the registry confirms (see _patch_chunk)
        return self._request(
            "PATCH",
            location,
            repository=repository,
            actions=_PUSH,
            what=what,
            content=content,
            idempotent=False,
            max_attempts=1,
            headers={"Content-Type": "application/octet-stream", **headers},
        )

    def _patch_stream(self, repository: str, location: str, body: Iterator[bytes]) -> str:
        what = "blob upload (streamed PATCH)"
        response = self._send_patch(repository, location, what, body, {})
        if response.status_code != 202:
            raise self._fail(response, repository, what, "HTTP 202")
        return self._location(response, repository, what)

    def _patch_chunks(
        self,
        repository: str,
        location: str,
        head: bytes,
        rest: Iterator[bytes],
        take: Callable[[bytes], None],
        size: int,
    ) -> tuple[str, bytes]:
        """Send *head* then *rest* in PATCHes of *size* bytes; the remainder is returned for the PUT.

        A chunk is the list of pieces that make it up (the piece across a boundary split by
        ``memoryview``), so building it copies nothing.
        """
        pending: list[bytes | memoryview] = [head] if head else []
        held = len(head)
        offset = 0
        while True:
            while held >= size:
                pieces: list[bytes | memoryview] = []
                need = size
                while need:
                    piece = pending.pop(0)
                    if len(piece) > need:
                        view = memoryview(piece)
                        piece, rest_of_piece = view[:need], view[need:]
                        pending.insert(0, rest_of_piece)
                    pieces.append(piece)
                    need -= len(piece)
                location = self._patch_chunk(repository, location, offset, pieces)
                held -= size
                offset += size
            chunk = next(rest, None)
            if chunk is None:
                return location, b"".join(pending)
            take(chunk)
            pending.append(chunk)
            held += len(chunk)

    def _patch_chunk(
        self, repository: str, location: str, offset: int, pieces: list[bytes | memoryview]
    ) -> str:
        """PATCH one chunk at *offset*; after a failure, ask the registry how much it kept and send the rest.

        A registry may keep part of a request that broke off, so a blind resend could be
        refused (416) or duplicate data: the upload's status (``Range: 0-N``) says where to
        go on.  distribution 2.8 instead cancels an upload left in that state; the error
        then says the upload cannot be resumed, and the caller starts a new one.
        """
        policy = self.options.retry
        end = offset + sum(len(p) for p in pieces)
        done, failures = 0, 0
        while True:
            start = offset + done
            what = f"blob upload chunk, bytes {start}-{end - 1} (PATCH)"
            try:
                response = self._send_patch(
                    repository,
                    location,
                    what,
                    _sent_once(pieces, skip=done),
                    {"Content-Range": f"{start}-{end - 1}", "Content-Length": str(end - start)},
                )
            except TransportError as exc:
                error: LayersealError = exc
            else:
                if response.status_code == 202:
                    response.close()
                    return self._location(response, repository, what)
                error = self._fail(response, repository, what, "HTTP 202")
                if not (response.status_code in (416, 429) or response.status_code >= 500):
                    raise error
            failures += 1
            if failures >= policy.max_attempts:
                raise error
            self._wait(
                policy.backoff(failures),
                f"{self._where(repository)}: {what}",
                str(error),
                failures,
                policy.max_attempts,
            )
            try:
                location, kept = self._upload_status(repository, location)
            except LayersealError as status_error:
                # distribution 2.8 cancels an upload whose size no longer matches its state token,
                # which is what a request broken off midway leaves: only a new upload can follow
                raise TransportError(
                    f"{error}; the registry cannot resume the upload after it ({status_error})"
                ) from error
            if not offset <= kept <= end:
                raise TransportError(
                    f"{self._where(repository)}: blob upload status after a failed chunk: "
                    + expected_seen("bytes received", f"{offset} to {end}", kept)
                ) from error
            log.debug("%s: %s failed (%s); registry holds %d bytes", repository, what, error, kept)
            if kept == end:
                return location
            done = kept - offset

    def _upload_status(self, repository: str, location: str) -> tuple[str, int]:
        """The upload's URL to go on with and how many bytes the registry holds (``Range: 0-N``)."""
        what = "blob upload status (GET)"
        response = self._request("GET", location, repository=repository, actions=_PUSH, what=what)
        response.close()
        if response.status_code != 204:
            raise self._fail(response, repository, what, "HTTP 204")
        rng = response.headers.get("range", "")
        first, sep, last = rng.removeprefix("bytes=").partition("-")
        if not (sep and first == "0" and last.isdigit()):
            raise TransportError(
                f"{self._where(repository)}: {what}: "
                + expected_seen("a Range header 0-N", "0-N", rng or "none")
            )
        # distribution reports "0-0" for an empty upload as well as for one byte
        kept = int(last) + 1 if int(last) > 0 else 0
        return self._location(response, repository, what), kept

    def _finish(self, repository: str, location: str, digest: Digest, size: int, tail: bytes) -> None:
        what = f"blob upload commit of {digest} (PUT)"
        url = str(httpx.URL(location).copy_add_param("digest", str(digest)))
        headers = {"Content-Type": "application/octet-stream"}
        try:
            response = self._request(
                "PUT",
                url,
                repository=repository,
                actions=_PUSH,
                what=what,
                content=tail,
                idempotent=False,
                headers=headers,
            )
        except TransportError:
            # the answer may be lost although the registry committed the blob
            if self.stat_blob(repository, digest) == size:
                return
            raise
        if response.status_code == 201:
            response.close()
            return
        error = self._fail(response, repository, what, "HTTP 201")
        if isinstance(error, TransportError | NotFoundError) and self.stat_blob(repository, digest) == size:
            return
        raise error

    # ----------------------------------------------------------------- listings

    def list_tags(self, repository: str, page_size: int | None = None) -> list[str]:
        """All tags of a repository, following ``Link: <...>; rel="next"`` pagination."""
        validate_repository(repository)
        url = f"/v2/{repository}/tags/list" + (f"?n={page_size}" if page_size else "")
        tags: list[str] = []
        seen_urls: set[str] = set()
        for _ in range(_MAX_PAGES):
            response, data = self._get_bounded(
                url, repository, "tag list", _MAX_LIST_BODY, {"Accept": "application/json"}
            )
            body: Any = _json_object(data, f"{self._where(repository)}: tag list")
            page = body.get("tags") or []
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise BadInputError(f"{self._where(repository)}: tag list: field 'tags': expected strings")
            tags.extend(page)
            link = response.links.get("next", {}).get("url")
            if not link:
                return tags
            url = str(response.url.join(link))
            if url in seen_urls:
                raise TransportError(f"{self._where(repository)}: tag list: pagination loops at {url}")
            seen_urls.add(url)
        raise TransportError(
            f"{self._where(repository)}: tag list: expected at most {_MAX_PAGES} pages, seen more"
        )

    def referrers(
        self, repository: str, digest: Digest, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests whose ``subject`` is *digest*: the referrers API, else the ``sha256-HEX`` tag schema."""
        validate_repository(repository)
        what = f"referrers of {digest}"
        url = f"/v2/{repository}/referrers/{digest}"
        if artifact_type:
            url = str(httpx.URL(url).copy_add_param("artifactType", artifact_type))
        try:
            _, data = self._get_bounded(url, repository, what, MAX_MANIFEST_BYTES, {"Accept": mt.OCI_INDEX})
        except NotFoundError:
            try:
                data, _, _ = self.get_manifest(
                    repository, f"{digest.algorithm}-{digest.hex}", accept=mt.OCI_INDEX
                )
            except NotFoundError:
                return []
        index = Index.from_bytes(data, f"{self._where(repository)}: {what}")
        found = list(index.manifests)
        if artifact_type:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found


def _sent_once(pieces: list[bytes | memoryview], skip: int = 0) -> Iterator[bytes]:
    """*pieces* (less their first *skip* bytes) as a request body that lets go of them once sent.

    httpx responses and their requests form a reference cycle, so a request holding its
    body as ``bytes`` keeps it until the garbage collector runs: with 16 MiB chunks that
    was 200 MB of dead chunks for a 200 MB upload (measured).  A finished generator holds
    nothing.
    """
    for piece in pieces:
        if skip >= len(piece):
            skip -= len(piece)
            continue
        yield bytes(piece[skip:]) if skip or isinstance(piece, memoryview) else piece
        skip = 0


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    return jsonutil.loads_object(data, what)
