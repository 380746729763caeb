"""An encrypted layer with its descriptor, built in memory for the containerd processor tests."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass

from layerseal.crypto.keys import PublicKey
from layerseal.crypto.keywrap import JweWrapper, LayerContext
from layerseal.crypto.layercipher import LayerEncryptor
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest
from layerseal.image.encryption import ANNOTATION_PUBOPTS, keys_annotation


@dataclass(frozen=True)
class EncLayer:
    plain: bytes  # the compressed plaintext the processor must output
    blob: bytes  # the ciphertext on stdin
    descriptor: Descriptor


def encrypted_layer(recipients: Sequence[PublicKey], size: int = 300_000) -> EncLayer:
    plain = gzip.compress(os.urandom(size), compresslevel=1)
    enc = LayerEncryptor()
    blob = enc.update(plain)
    pub, priv = enc.finalize()
    plain_desc = Descriptor(mt.OCI_LAYER_GZIP, Digest.of(plain), len(plain))
    wrapped = JweWrapper(recipients).wrap(priv, LayerContext(0, plain_desc, "test"))
    name, value = keys_annotation("jwe", [wrapped])
    desc = Descriptor(
        mt.encrypted_type(mt.OCI_LAYER_GZIP),
        Digest.of(blob),
        len(blob),
        {ANNOTATION_PUBOPTS: pub.to_annotation(), name: value},
    )
    return EncLayer(plain, blob, desc)


def tampered(layer: EncLayer) -> tuple[bytes, Descriptor]:
    """One ciphertext bit flipped, and the descriptor rewritten to the altered blob's digest."""
    blob = bytearray(layer.blob)
    blob[len(blob) // 2] ^= 0x01
    return bytes(blob), layer.descriptor.with_changes(digest=Digest.of(bytes(blob)))
