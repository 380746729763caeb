"""Streaming ``AES_256_CTR_HMAC_SHA256``, byte-compatible with ocicrypt.

Encrypt-then-MAC: AES-256 in CTR mode with the 16-byte nonce as the initial counter
block, HMAC-SHA256 keyed with the same 32-byte key over the ciphertext only.

Both objects are small state machines: ``update()`` any number of times, then
``finalize()`` exactly once.  The HMAC of one chunk runs on a helper thread while
the next chunk is en/decrypted (both release the GIL), which lifts throughput from
the sequential ~1.0 GB/s to the HMAC limit on a two-core machine.

:class:`LayerDecryptor` returns plaintext from ``update()`` because memory must stay
constant; callers must treat it as *unauthenticated* until ``finalize()`` returned,
i.e. write it to a temporary place and commit only afterwards.  ``update_into()``
decrypts into the caller's buffer instead (no allocation, the AES without the GIL);
:func:`decrypt_views` streams that way through a small ring of reused buffers.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import logging
import os
from collections.abc import Iterable, Iterator

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from layerseal.errors import IntegrityError, MisuseError
from layerseal.image.digest import Digest
from layerseal.image.encryption import CIPHER_AES_CTR_HMAC, PrivateOptions, PublicOptions
from layerseal.streams import Background

log = logging.getLogger(__name__)

KEY_SIZE = 32
NONCE_SIZE = 16


class _LayerCipher:
    """What both directions share: the CTR context, the HMAC of the ciphertext on a helper
    thread and, when asked, the SHA-256 of the plaintext on another."""

    def __init__(self, symkey: bytes, nonce: bytes, *, decrypt: bool, hash_plain: bool) -> None:
        cipher = Cipher(algorithms.AES(symkey), modes.CTR(nonce))
        self._ctr = cipher.decryptor() if decrypt else cipher.encryptor()
        self._mac = c_hmac.HMAC(symkey, hashes.SHA256())
        self._mac_bg = Background(self._mac.update)
        self._plain_digest = hashlib.sha256() if hash_plain else None
        self._digest_bg = Background(self._plain_digest.update) if self._plain_digest is not None else None
        self.size = 0
        self._done = False

    def _check_open(self, call: str) -> None:
        if self._done:
            raise MisuseError(f"{type(self).__name__}.{call}() after finalize()")

    def _finish(self, call: str) -> bytes:
        """End the stream once; the HMAC of all the ciphertext."""
        if self._done:
            raise MisuseError(f"{type(self).__name__}.{call}() called twice")
        self._done = True
        self._ctr.finalize()
        self._mac_bg.wait()
        return self._mac.finalize()

    def _plain_digest_value(self) -> Digest | None:
        if self._plain_digest is None or self._digest_bg is None:
            return None
        self._digest_bg.wait()
        return Digest("sha256", self._plain_digest.hexdigest())


class LayerEncryptor(_LayerCipher):
    """Encrypts one layer blob; ``finalize()`` gives the public and private options."""

    def __init__(
        self, symkey: bytes | None = None, nonce: bytes | None = None, plain_digest: Digest | None = None
    ) -> None:
        """*plain_digest*, when the caller already verifies the plaintext's digest, saves a hash pass."""
        self._symkey = symkey if symkey is not None else os.urandom(KEY_SIZE)
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        if len(self._symkey) != KEY_SIZE or len(self._nonce) != NONCE_SIZE:
            raise MisuseError("LayerEncryptor: expected a 32-byte key and a 16-byte nonce")
        super().__init__(self._symkey, self._nonce, decrypt=False, hash_plain=plain_digest is None)
        self._known_digest = plain_digest

    def update(self, plaintext: bytes | memoryview) -> bytes:
        self._check_open("update")
        data = bytes(plaintext)  # the digest thread reads it later: it must not change (no copy of bytes)
        if self._digest_bg is not None:
            self._digest_bg.update(data)
        ciphertext = self._ctr.update(data)
        self._mac_bg.update(ciphertext)
        self.size += len(ciphertext)
        return ciphertext

    def finalize(self) -> tuple[PublicOptions, PrivateOptions]:
        pub = PublicOptions(cipher=CIPHER_AES_CTR_HMAC, hmac=self._finish("finalize"))
        digest = self._plain_digest_value()
        if digest is None:
            assert self._known_digest is not None
            digest = self._known_digest
        priv = PrivateOptions(symkey=self._symkey, nonce=self._nonce, digest=digest)
        return pub, priv


class LayerDecryptor(_LayerCipher):
    """Decrypts one layer blob and authenticates it when finalized.

    *what* names the layer in errors.  ``finalize()`` raises :class:`IntegrityError`
    when the HMAC over the ciphertext does not match: that HMAC, keyed with the layer
    key, is what authenticates a layer (as in ocicrypt).  The ``digest`` in the private
    options is *not* checked: ocicrypt records the digest of the descriptor its caller
    hands it, and containers/image (skopeo, podman, buildah) hands it the source blob
    before compressing or recompressing, so for many valid images it names another blob.
    With ``compute_digest`` (default) the decrypted blob's digest is computed and
    returned; a caller that hashes the plaintext anyway (a destination storing it)
    passes False and gets None.
    """

    def __init__(
        self, pub: PublicOptions, priv: PrivateOptions, what: str = "layer", *, compute_digest: bool = True
    ) -> None:
        super().__init__(priv.symkey, priv.nonce, decrypt=True, hash_plain=compute_digest)
        self._pub = pub
        self._priv = priv
        self._what = what

    def _mac_ciphertext(self, ciphertext: bytes | memoryview) -> bytes:
        self._check_open("update")
        data = bytes(ciphertext)  # the HMAC thread reads it later: it must not change (no copy of bytes)
        self._mac_bg.update(data)
        self.size += len(data)
        return data

    def update(self, ciphertext: bytes | memoryview) -> bytes:
        plaintext = self._ctr.update(self._mac_ciphertext(ciphertext))
        if self._digest_bg is not None:
            self._digest_bg.update(plaintext)
        return plaintext

    def update_into(self, ciphertext: bytes | memoryview, out: bytearray) -> memoryview:
        """Decrypt into *out* (at least ``len(ciphertext) + 15`` bytes); the plaintext's view in it.

        No allocation, and the AES runs without the GIL (``update()`` holds it while it
        builds its result).  The plaintext is as unauthenticated as ``update()``'s.
        """
        n = self._ctr.update_into(self._mac_ciphertext(ciphertext), out)
        view = memoryview(out)[:n]
        if self._plain_digest is not None and self._digest_bg is not None:
            # *out* is the caller's to reuse: hashed here, not on the digest thread
            self._digest_bg.wait()
            self._plain_digest.update(view)
        return view

    def finalize(self) -> Digest | None:
        """Authenticate; returns the decrypted blob's digest (None without ``compute_digest``)."""
        mac = self._finish("finalize")
        if not _hmac.compare_digest(mac, self._pub.hmac):
            raise IntegrityError(
                f"{self._what}: HMAC mismatch: ciphertext was altered or the key is wrong "
                f"(expected the HMAC from pubopts, seen a different value)"
            )
        got = self._plain_digest_value()
        if got is not None:
            note_recorded_digest(self._priv, got, self._what)
        return got


def note_recorded_digest(priv: PrivateOptions, decrypted: Digest, what: str) -> bool:
    """Log at debug level when the private options name another digest than the decrypted blob's.

    Not an error (see :class:`LayerDecryptor`); returns whether they differ.
    """
    if decrypted == priv.digest:
        return False
    log.debug(
        "%s: the private options record %s (the blob ocicrypt was handed, e.g. the source before "
        "(re)compression); the decrypted blob is %s, authenticated by the HMAC",
        what,
        priv.digest,
        decrypted,
    )
    return True


def encrypt_stream(chunks: Iterable[bytes], enc: LayerEncryptor) -> Iterator[bytes]:
    """Ciphertext of *chunks*; call ``enc.finalize()`` once the stream is consumed."""
    for chunk in chunks:
        yield enc.update(chunk)


def decrypt_stream(chunks: Iterable[bytes], dec: LayerDecryptor) -> Iterator[bytes]:
    """Plaintext of *chunks*, authenticated at the end: the last step raises on a bad HMAC.

    A consumer that commits its output only after this iterator ran to its end without
    raising never commits unauthenticated plaintext.
    """
    for chunk in chunks:
        yield dec.update(chunk)
    dec.finalize()


#: AES-CTR's ``update_into`` wants this much room beyond the input
_CTR_SLACK = 15
#: ring buffers grow in steps of this, so chunks of varying size reuse them
_BUFFER_STEP = 256 * 1024


def _unviewed(buf: bytearray) -> bool:
    """True when no memoryview of *buf* is alive: CPython refuses to resize a viewed bytearray."""
    try:
        buf.append(0)  # within the spare byte _new_buffer leaves: no reallocation
    except BufferError:
        return False
    del buf[-1]
    return True


def _new_buffer(size: int) -> bytearray:
    buf = bytearray(size + 1)
    del buf[-1]  # keeps the allocation: the spare byte _unviewed() probes with
    return buf


def decrypt_views(
    chunks: Iterable[bytes | memoryview], dec: LayerDecryptor, buffers: int
) -> Iterator[memoryview]:
    """Like :func:`decrypt_stream`, as views into a ring of *buffers* reused buffers.

    A buffer is written again only when no view of it is alive anywhere (a consumer
    still holding one gets a fresh buffer in its place, so no view ever changes under
    it); with a consumer that is done with a view once it holds the next *buffers* - 1,
    the ring is all the memory the plaintext takes and no chunk is allocated.
    """
    ring: list[bytearray | None] = [None] * max(1, buffers)
    turn = 0
    for chunk in chunks:
        if not chunk:
            continue
        need = len(chunk) + _CTR_SLACK
        buf = ring[turn]
        if buf is None or len(buf) < need or not _unviewed(buf):
            buf = ring[turn] = _new_buffer(-(-need // _BUFFER_STEP) * _BUFFER_STEP)
        turn = (turn + 1) % len(ring)
        yield dec.update_into(chunk, buf)
    dec.finalize()
