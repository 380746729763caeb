"""Key wrapping schemes: how a layer's private options are sealed for its recipients.

A wrapper produces one blob for ``org.opencontainers.image.enc.keys.<scheme>``; an
unwrapper tries to open such a blob and returns the private options, or ``None`` when
the blob is not meant for its keys.  JWE (ocicrypt's default) and PKCS#7 (X.509
recipients) live here; schemes that talk to a key broker implement the same protocols
elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from layerseal.crypto.keys import PrivateKey, PublicKey

if TYPE_CHECKING:  # x509 loads only when a PKCS#7 envelope is made or opened
    from cryptography.x509 import Certificate  # noqa: F401 (Pkcs7Wrapper's base names it)
from layerseal.errors import BadInputError, WrongKeyError
from layerseal.image.descriptor import Descriptor
from layerseal.image.encryption import ANNOTATION_PUBOPTS, PrivateOptions, PublicOptions, wrapped_keys

#: The one provider name layerseal publishes broker key packets under (``copy kbs:``, the
#: keyprovider's default): the name Confidential Containers guests (image-rs) look for.
PROVIDER_NAME = "attestation-agent"
#: Names whose broker key packets layerseal opens: its own, and ``layerseal`` (the
#: keyprovider's default before one name was chosen; such images stay readable).
BROKER_PROVIDER_NAMES = (PROVIDER_NAME, "layerseal")
BROKER_SCHEMES = tuple(f"provider.{name}" for name in BROKER_PROVIDER_NAMES)

_Recipient = TypeVar("_Recipient")


@dataclass(frozen=True)
class LayerContext:
    """Which layer a key is wrapped for: its position, plain descriptor and image name."""

    index: int
    descriptor: Descriptor
    image: str

    def __str__(self) -> str:
        return f"layer {self.index} ({self.descriptor.digest})"


class KeyWrapper(Protocol):
    @property
    def scheme(self) -> str: ...

    def wrap(self, opts: PrivateOptions, layer: LayerContext) -> bytes: ...


class KeyUnwrapper(Protocol):
    def handles(self, scheme: str) -> bool: ...

    def unwrap(self, scheme: str, blob: bytes, layer: LayerContext) -> bytes | None: ...


class _EnvelopeModule(Protocol):
    """What ``layerseal.crypto.jwe`` and ``layerseal.crypto.pkcs7`` both offer."""

    def encrypt(self, payload: bytes, recipients: Sequence[Any], /) -> bytes: ...

    def decrypt(self, blob: bytes, keys: Sequence[PrivateKey], /, what: str) -> bytes: ...


def _envelope(scheme: str) -> _EnvelopeModule:
    # imported on first use: joserfc (behind jwe) costs 40 ms of start-up
    if scheme == "jwe":
        from layerseal.crypto import jwe

        return jwe
    from layerseal.crypto import pkcs7

    return pkcs7


class _EnvelopeWrapper(Generic[_Recipient]):
    """Seals private options in one envelope of *scheme* (its module's name) for all recipients."""

    scheme: ClassVar[str]

    def __init__(self, recipients: Sequence[_Recipient]) -> None:
        self.recipients = tuple(recipients)

    def wrap(self, opts: PrivateOptions, layer: LayerContext) -> bytes:
        return _envelope(self.scheme).encrypt(opts.to_json_bytes(), self.recipients)


class _EnvelopeUnwrapper:
    """Opens envelopes of *scheme* with any of the given private keys."""

    scheme: ClassVar[str]
    label: ClassVar[str]  # the envelope's name in errors

    def __init__(self, keys: Sequence[PrivateKey]) -> None:
        self.keys = tuple(keys)

    def handles(self, scheme: str) -> bool:
        return scheme == self.scheme and bool(self.keys)

    def unwrap(self, scheme: str, blob: bytes, layer: LayerContext) -> bytes | None:
        try:
            return _envelope(self.scheme).decrypt(blob, self.keys, what=f"{self.label} of {layer}")
        except WrongKeyError:
            return None


class JweWrapper(_EnvelopeWrapper[PublicKey]):
    """Seals private options in one JWE with a recipient per public key (ocicrypt ``jwe``)."""

    scheme = "jwe"


class JweUnwrapper(_EnvelopeUnwrapper):
    """Opens ``jwe`` blobs with any of the given private keys."""

    scheme, label = "jwe", "JWE"


class Pkcs7Wrapper(_EnvelopeWrapper["Certificate"]):
    """Seals private options in one PKCS#7 EnvelopedData for X.509 recipients (ocicrypt ``pkcs7``)."""

    scheme = "pkcs7"


class Pkcs7Unwrapper(_EnvelopeUnwrapper):
    """Opens ``pkcs7`` blobs with any of the given (RSA) private keys; certificates are not needed."""

    scheme, label = "pkcs7", "PKCS#7"


def open_private_options(
    desc: Descriptor, layer: LayerContext, unwrappers: Sequence[KeyUnwrapper]
) -> PrivateOptions:
    """Unwrap a layer's private options with whichever key opens one of its wrapped blobs."""
    blobs = wrapped_keys(desc.annotations)
    if not blobs:
        raise BadInputError(f"{layer}: encrypted, but has no org.opencontainers.image.enc.keys.* annotation")
    tried = 0
    for scheme, items in sorted(blobs.items()):
        for unwrapper in unwrappers:
            if not unwrapper.handles(scheme):
                continue
            for blob in items:
                tried += 1
                optsdata = unwrapper.unwrap(scheme, blob, layer)
                if optsdata is not None:
                    return PrivateOptions.from_json_bytes(optsdata, f"private options of {layer}")
    schemes = ", ".join(f"{s} ({len(b)} blob{'s' if len(b) != 1 else ''})" for s, b in sorted(blobs.items()))
    raise WrongKeyError(
        f"{layer}: expected one of the given decryption keys to open its wrapped key, "
        f"seen none that does after {tried} attempt(s) (wrapped for: {schemes})"
    )


def public_options(desc: Descriptor, layer: LayerContext) -> PublicOptions:
    value = desc.annotations.get(ANNOTATION_PUBOPTS)
    if value is None:
        raise BadInputError(f"{layer}: expected annotation {ANNOTATION_PUBOPTS}, seen none")
    return PublicOptions.from_annotation(value, f"{ANNOTATION_PUBOPTS} of {layer}")
