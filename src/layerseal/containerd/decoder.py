"""Decrypt one encrypted layer for containerd: spool, authenticate, only then release plaintext.

containerd pipes the layer blob to the processor's stdin and extracts whatever the
processor writes to stdout straight into the layer's active snapshot (containerd 1.6:
into the overlay upper directory, as it reads).  AES-CTR is malleable: plaintext
released before the HMAC is checked could be bit-flipped by whoever altered the
ciphertext, and would already be on disk when the HMAC fails at the end.  containerd
1.6 also reads the processor's exit status without waiting for it after stdout ends,
so an error reported after the last byte can be missed.  Hence:

1. **spool**: stdin goes to an anonymous file (``O_TMPFILE``, mode 0600) in a private
   directory while its digest (and, when the key is already known, the HMAC) is
   computed.  Only ciphertext touches the disk, the same bytes containerd's content
   store already holds; memory stays constant whatever the layer size.
2. **key**: the layer's descriptor comes from the payload, else from the manifests in
   containerd's content store (see ``contentstore``); its wrapped keys are opened with
   JWE private keys (payload, keys directory) or through the broker (key packets under
   ``provider.attestation-agent`` or ``provider.layerseal``).
3. **authenticate**: the HMAC over the whole spooled ciphertext must match the one in
   the layer's public options, else the processor exits with an integrity error and
   has written nothing to stdout.
4. **release**: the spool is decrypted to stdout; the HMAC is computed again on the
   way as a check that the spool did not change meanwhile (a failure there still
   exits non-zero; containerd's diff_id check then rejects the layer).

The plaintext digest inside the private options is not relied upon: containerd checks
the uncompressed result against the image config's ``diff_ids`` before it commits
the snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as c_hmac

from layerseal.crypto.keywrap import KeyUnwrapper, LayerContext, open_private_options, public_options
from layerseal.crypto.layercipher import LayerDecryptor
from layerseal.errors import BadInputError, DeniedError, IntegrityError, LayersealError, WrongKeyError
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest
from layerseal.image.encryption import PrivateOptions, PublicOptions
from layerseal.streams import Background

CHUNK = 1 << 20


@dataclass(frozen=True)
class DecodeResult:
    """What one run decrypted (for logs and tests; no secrets)."""

    digest: Digest
    size: int
    plain_size: int
    descriptor_source: str  # "payload" or "content store"


@contextlib.contextmanager
def open_spool(directory: Path) -> Iterator[BinaryIO]:
    """An anonymous read-write file in *directory*, gone when closed (or when the process dies)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(
            f"spool directory {directory}: expected a creatable directory, seen {exc.strerror}"
        ) from exc
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise BadInputError(
                f"spool directory {directory}: expected a writable directory, seen {exc.strerror}"
            ) from exc
        fd, name = tempfile.mkstemp(prefix=".layer-", dir=directory)  # 0600 from creation on
        os.unlink(name)
    with os.fdopen(fd, "w+b") as fh:
        yield fh


def _new_mac(priv: PrivateOptions) -> c_hmac.HMAC:
    return c_hmac.HMAC(priv.symkey, hashes.SHA256())


def _check_mac(mac: c_hmac.HMAC, pub: PublicOptions, what: str) -> None:
    if not hmac.compare_digest(mac.finalize(), pub.hmac):
        raise IntegrityError(
            f"{what}: HMAC mismatch: expected the HMAC from pubopts, seen a different value "
            "(ciphertext altered or wrong key); nothing was written to stdout"
        )


def spool_input(
    src: BinaryIO, spool: BinaryIO, mac: c_hmac.HMAC | None = None, limit: int | None = None
) -> tuple[Digest, int]:
    """Copy *src* into *spool*; returns the digest and size of what was read."""
    digest = hashlib.sha256()
    # the digest and the HMAC of one chunk run on helper threads while the next is read and written
    digest_bg = Background(digest.update)
    mac_bg = Background(mac.update) if mac is not None else None
    size = 0
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if limit is not None and size > limit:
            raise IntegrityError(f"encrypted layer on stdin: expected {limit} bytes, seen more")
        digest_bg.update(chunk)
        if mac_bg is not None:
            mac_bg.update(chunk)
        spool.write(chunk)
    digest_bg.wait()
    if mac_bg is not None:
        mac_bg.wait()
    spool.flush()
    return Digest("sha256", digest.hexdigest()), size


def _chunks(spool: BinaryIO) -> Iterator[bytes]:
    spool.seek(0)
    while chunk := spool.read(CHUNK):
        yield chunk


def authenticate(spool: BinaryIO, pub: PublicOptions, priv: PrivateOptions, what: str) -> None:
    mac = _new_mac(priv)
    for chunk in _chunks(spool):
        mac.update(chunk)
    _check_mac(mac, pub, what)


def release(spool: BinaryIO, out: BinaryIO, pub: PublicOptions, priv: PrivateOptions, what: str) -> int:
    """Decrypt the authenticated spool to *out*; returns the plaintext size."""
    dec = LayerDecryptor(pub, priv, what, compute_digest=False)
    for chunk in _chunks(spool):
        out.write(dec.update(chunk))
    dec.finalize()  # the spool changed after step 3 if this fails
    out.flush()
    return dec.size


def open_keys(
    desc: Descriptor, unwrappers: Sequence[KeyUnwrapper], what: str
) -> tuple[PublicOptions, PrivateOptions]:
    ctx = LayerContext(0, desc, what)
    return public_options(desc, ctx), open_private_options(desc, ctx, unwrappers)


def decode(
    src: BinaryIO,
    out: BinaryIO,
    media_type: str,
    *,
    descriptor: Descriptor | None,
    find_descriptors: Callable[[Digest, str], list[Descriptor]] | None = None,
    unwrappers: Sequence[KeyUnwrapper],
    spool_dir: Path,
) -> DecodeResult:
    """Run steps 1-4 of the module docstring for the layer on *src*.

    *find_descriptors* is ``callable(digest, media_type) -> list[Descriptor]`` used when
    *descriptor* is None (the content store lookup).
    """
    if not mt.is_encrypted(media_type):
        raise BadInputError(
            f"STREAM_PROCESSOR_MEDIATYPE: expected one of {sorted(mt.ENCRYPTED_LAYERS)}, seen {media_type!r}"
        )
    if descriptor is not None and descriptor.media_type != media_type:
        raise BadInputError(
            f"payload descriptor {descriptor.digest}: media type expected {media_type!r} "
            f"(STREAM_PROCESSOR_MEDIATYPE), seen {descriptor.media_type!r}"
        )
    with open_spool(spool_dir) as spool:
        known: tuple[PublicOptions, PrivateOptions] | None = None
        mac = None
        if descriptor is not None:
            # keys first: a refused key fails before the blob is read, and the HMAC rides on the spooling
            known = open_keys(descriptor, unwrappers, f"layer {descriptor.digest}")
            mac = _new_mac(known[1])
        digest, size = spool_input(src, spool, mac, descriptor.size if descriptor is not None else None)
        what = f"layer {digest}"
        if descriptor is not None and known is not None and mac is not None:
            if descriptor.digest != digest or descriptor.size != size:
                raise IntegrityError(
                    f"layer on stdin: expected {descriptor.digest} ({descriptor.size} bytes) as the payload "
                    f"descriptor says, seen {digest} ({size} bytes); nothing was written to stdout"
                )
            pub, priv = known
            _check_mac(mac, pub, what)
            source = "payload"
        else:
            if find_descriptors is None:
                raise BadInputError(
                    f"{what}: expected a payload with the layer descriptor on fd 3 or --containerd-root "
                    "to find it in containerd's content store, seen neither"
                )
            candidates = find_descriptors(digest, media_type)
            if not candidates:
                raise BadInputError(
                    f"{what}: expected a manifest in containerd's content store naming this "
                    f"{media_type} blob (or a payload on fd 3), seen none"
                )
            pub, priv = _first_authentic(spool, candidates, unwrappers, what)
            source = "content store"
        plain = release(spool, out, pub, priv, what)
    return DecodeResult(digest, size, plain, source)


def _first_authentic(
    spool: BinaryIO, candidates: Sequence[Descriptor], unwrappers: Sequence[KeyUnwrapper], what: str
) -> tuple[PublicOptions, PrivateOptions]:
    """Keys of the first candidate descriptor that opens and authenticates the spooled blob."""
    errors: list[LayersealError] = []
    for desc in candidates:
        try:
            pub, priv = open_keys(desc, unwrappers, what)
            authenticate(spool, pub, priv, what)
            return pub, priv
        except (WrongKeyError, DeniedError, IntegrityError) as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    # a key that opened but did not authenticate says more than keys that did not open
    first = next((e for e in errors if isinstance(e, IntegrityError)), errors[0])
    raise type(first)(
        f"{what}: none of the {len(errors)} manifests naming this blob opens and authenticates it: "
        + "; ".join(str(e) for e in errors)
    )
