"""Blob downloads: streamed, verified against digest and size, resumed with ``Range``.

Blobs are handed on in the pieces the socket delivers (small ones joined), so the
cipher and hash threads see few, large pieces without a re-slicing copy; an
interrupted download continues from where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx

from layerseal.errors import IntegrityError, TransportError, expected_seen
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest, DigestVerifier
from layerseal.registry.session import PULL, RegistrySession

log = logging.getLogger(__name__)

# Reads at least this big go downstream as they arrived; smaller ones are joined first,
# so the cipher and hash threads see few, large pieces without a re-slicing copy.
MIN_PIECE = 256 * 1024


class Downloads:
    """The blob endpoints for reading, over one :class:`RegistrySession`."""

    def __init__(self, session: RegistrySession) -> None:
        self._session = session

    def stat(self, repository: str, digest: Digest) -> int | None:
        """The size of a blob the registry holds (-1: not said), or None when it does not."""
        what = f"blob {digest} (HEAD)"
        url = f"/v2/{repository}/blobs/{digest}"
        response = self._session.request("HEAD", url, repository, PULL, what, expect=(200, 404))
        if response.status_code == 404:
            return None
        length = response.headers.get("content-length", "")
        return int(length) if length.isdigit() else -1

    def iter_blob(self, repository: str, desc: Descriptor) -> Iterator[bytes]:
        """Stream a blob, verifying digest and size; resumes with ``Range`` after a broken connection.

        Raises IntegrityError from the iterator when the bytes do not match *desc*.
        """
        where = f"{self._session.where(repository)}: blob {desc.digest}"
        verifier = DigestVerifier(desc.digest, desc.size, what=where)
        reads = self._session.retrier.attempts(where)
        # received and hashed, not yet handed out: less than MIN_PIECE
        parts: list[bytes] = []
        buffered = 0
        while True:
            reads.start()
            offset = verifier.size
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            url = f"/v2/{repository}/blobs/{desc.digest}"
            what = f"blob {desc.digest}"
            response = self._session.request("GET", url, repository, PULL, what, headers=headers, stream=True)
            try:
                skip = self._check_response(response, repository, desc, offset)
                # iter_bytes (not iter_raw) undoes a Content-Encoding a proxy may add despite our header;
                # no chunk size, so every byte read counts towards a resume offset at once
                for piece in response.iter_bytes():
                    if skip:
                        dropped = min(skip, len(piece))
                        piece, skip = piece[dropped:], skip - dropped
                    verifier.update(piece)
                    if not parts and len(piece) >= MIN_PIECE:
                        yield piece  # most reads: handed on as they are, no copy
                        continue
                    parts.append(piece)
                    buffered += len(piece)
                    if buffered >= MIN_PIECE:
                        yield b"".join(parts)
                        parts.clear()
                        buffered = 0
            except httpx.TransportError as exc:
                if verifier.size > offset:
                    reads.progressed()
                failure = self._session.network_failure(exc)
                if verifier.size < desc.size and reads.after_network_error(failure):
                    log.debug("%s: %s after %d bytes, resuming", where, type(exc).__name__, verifier.size)
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

    def _check_response(
        self, response: httpx.Response, repository: str, desc: Descriptor, offset: int
    ) -> int:
        """Validate the status of a (ranged) blob GET; returns how many leading bytes to drop."""
        what = f"blob {desc.digest}"
        where = f"{self._session.where(repository)}: {what}"
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
        raise self._session.fail(response, repository, what, "HTTP 200" + (" or 206" if offset else ""))
