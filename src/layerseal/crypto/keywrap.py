"""Key wrapping schemes: how a layer's private options are sealed for its recipients.

A wrapper produces one blob for ``org.opencontainers.image.enc.keys.<scheme>``; an
unwrapper tries to open such a blob and returns the private options, or ``None`` when
the blob is not meant for its keys.  JWE (ocicrypt's default) lives here; schemes that
talk to a key broker implement the same protocols elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from layerseal.crypto import jwe
from layerseal.crypto.keys import PrivateKey, PublicKey
from layerseal.errors import WrongKeyError
from layerseal.image.descriptor import Descriptor
from layerseal.image.encryption import PrivateOptions


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


class JweWrapper:
    """Seals private options in one JWE with a recipient per public key (ocicrypt ``jwe``)."""

    scheme = "jwe"

    def __init__(self, keys: Sequence[PublicKey]) -> None:
        self.keys = tuple(keys)

    def wrap(self, opts: PrivateOptions, layer: LayerContext) -> bytes:
        return jwe.encrypt(opts.to_json_bytes(), self.keys)


class JweUnwrapper:
    """Opens ``jwe`` blobs with any of the given private keys."""

    def __init__(self, keys: Sequence[PrivateKey]) -> None:
        self.keys = tuple(keys)

    def handles(self, scheme: str) -> bool:
        return scheme == "jwe" and bool(self.keys)

    def unwrap(self, scheme: str, blob: bytes, layer: LayerContext) -> bytes | None:
        try:
            return jwe.decrypt(blob, self.keys, what=f"JWE of {layer}")
        except WrongKeyError:
            return None
