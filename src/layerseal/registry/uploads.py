"""Blob uploads: the monolithic PUT, one streamed PATCH, or ``Content-Range`` chunks.

A blob is committed (the closing PUT with its digest) only after its stream ended
cleanly and matched what was expected; the upload session is deleted when anything
fails.  A streamed body is sent once: a broken or refused one fails the upload, and the
caller transfers the blob again from its source.  A chunk, held in memory, is resumed
from the offset the registry reports.  Cross-repository mounts live here too.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator

import httpx

from layerseal.errors import IntegrityError, LayersealError, NotFoundError, TransportError, expected_seen
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest
from layerseal.registry.auth import repository_scope
from layerseal.registry.reference import validate_repository
from layerseal.registry.session import PULL, PUSH, RegistrySession
from layerseal.streams import Background

log = logging.getLogger(__name__)


class Uploads:
    """The blob endpoints for writing, over one :class:`RegistrySession`."""

    def __init__(self, session: RegistrySession, stat: Callable[[str, Digest], int | None]) -> None:
        self._session = session
        # a commit whose answer was lost is confirmed by asking whether the blob is there
        self._stat = stat

    def mount(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Cross-repository mount; False when the registry could not mount (nothing is left behind)."""
        validate_repository(from_repository)
        what = f"mount of blob {digest} from {from_repository}"
        url = f"/v2/{repository}/blobs/uploads/?mount={digest}&from={from_repository}"
        source = (repository_scope(from_repository, PULL),)
        response = self._session.request(
            "POST", url, repository, PUSH, what, expect=(201, 202), extra_scopes=source
        )
        if response.status_code == 201:
            return True
        # the registry opened an upload session instead; we do not need it
        location = response.headers.get("location")
        if location:
            self._cancel(repository, str(response.url.join(location)))
        return False

    # ----------------------------------------------------------------- uploads

    def _start(self, repository: str) -> tuple[str, int]:
        """Open an upload session: its URL, and the registry's smallest chunk (``OCI-Chunk-Min-Length``)."""
        what = "blob upload (POST)"
        url = f"/v2/{repository}/blobs/uploads/"
        empty = {"Content-Length": "0"}
        response = self._session.request("POST", url, repository, PUSH, what, expect=(202,), headers=empty)
        minimum = response.headers.get("oci-chunk-min-length", "")
        return self._session.location(response, repository, what), int(minimum) if minimum.isdigit() else 0

    def _cancel(self, repository: str, location: str) -> None:
        try:
            self._session.request(
                "DELETE", location, repository, PUSH, "cancel upload", max_attempts=1
            ).close()
        except (LayersealError, httpx.HTTPError) as exc:
            log.debug("%s: cancelling upload failed: %s", self._session.where(repository), type(exc).__name__)

    def upload(
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
        limit = self._session.options.upload_chunk_limit
        # with a limit, no request body may exceed it: not even a single-PUT upload's
        segment = (
            min(self._session.options.upload_chunk_size, limit)
            if limit
            else self._session.options.upload_chunk_size
        )
        location, min_chunk = self._start(repository)
        where = f"{self._session.where(repository)}: blob upload"
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
            self._cancel(repository, location)
            raise

    def _send_patch(
        self,
        repository: str,
        location: str,
        what: str,
        content: bytes | Iterator[bytes],
        headers: dict[str, str],
    ) -> httpx.Response:
        # the body is a stream, so the session sends it once; a chunk is sent again only
        # from the offset the registry confirms (see _patch_chunk)
        headers = {"Content-Type": "application/octet-stream", **headers}
        return self._session.request(
            "PATCH", location, repository, PUSH, what, headers=headers, content=content, idempotent=False
        )

    def _patch_stream(self, repository: str, location: str, body: Iterator[bytes]) -> str:
        what = "blob upload (streamed PATCH)"
        response = self._send_patch(repository, location, what, body, {})
        if response.status_code != 202:
            raise self._session.fail(response, repository, what, "HTTP 202")
        return self._session.location(response, repository, what)

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
        end = offset + sum(len(p) for p in pieces)
        tries = self._session.retrier.attempts(self._session.where(repository))
        done = 0
        while True:
            tries.start()
            start = offset + done
            what = f"blob upload chunk, bytes {start}-{end - 1} (PATCH)"
            tries.where = f"{self._session.where(repository)}: {what}"
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
                    return self._session.location(response, repository, what)
                error = self._session.fail(response, repository, what, "HTTP 202")
                if not (response.status_code in (416, 429) or response.status_code >= 500):
                    raise error
            if not tries.after_failure(str(error)):
                raise error
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
                    f"{self._session.where(repository)}: blob upload status after a failed chunk: "
                    + expected_seen("bytes received", f"{offset} to {end}", kept)
                ) from error
            log.debug("%s: %s failed (%s); registry holds %d bytes", repository, what, error, kept)
            if kept == end:
                return location
            done = kept - offset

    def _upload_status(self, repository: str, location: str) -> tuple[str, int]:
        """The upload's URL to go on with and how many bytes the registry holds (``Range: 0-N``)."""
        what = "blob upload status (GET)"
        response = self._session.request("GET", location, repository, PUSH, what, expect=(204,))
        response.close()
        rng = response.headers.get("range", "")
        first, sep, last = rng.removeprefix("bytes=").partition("-")
        if not (sep and first == "0" and last.isdigit()):
            raise TransportError(
                f"{self._session.where(repository)}: {what}: "
                + expected_seen("a Range header 0-N", "0-N", rng or "none")
            )
        # distribution reports "0-0" for an empty upload as well as for one byte
        kept = int(last) + 1 if int(last) > 0 else 0
        return self._session.location(response, repository, what), kept

    def _finish(self, repository: str, location: str, digest: Digest, size: int, tail: bytes) -> None:
        what = f"blob upload commit of {digest} (PUT)"
        url = str(httpx.URL(location).copy_add_param("digest", str(digest)))
        headers = {"Content-Type": "application/octet-stream"}
        try:
            response = self._session.request(
                "PUT", url, repository, PUSH, what, headers=headers, content=tail, idempotent=False
            )
        except TransportError:
            # the answer may be lost although the registry committed the blob
            if self._stat(repository, digest) == size:
                return
            raise
        if response.status_code == 201:
            response.close()
            return
        error = self._session.fail(response, repository, what, "HTTP 201")
        if isinstance(error, TransportError | NotFoundError) and self._stat(repository, digest) == size:
            return
        raise error


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
