"""``layerseal keys rotate``: new broker key versions for every layer, annotations only.

Each layer's key packet is sent to the broker, which opens it with the current KEK
version and seals the same private options under a fresh version.  Only the layer
annotations change: no blob is re-encrypted or re-uploaded.  With ``reencrypt`` the
layers are decrypted (with keys the caller holds) and encrypted again with fresh layer
keys, for when a layer key itself may have leaked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from layerseal.broker.client import PublisherClient
from layerseal.broker.packets import KeyPacket, ResourcePath
from layerseal.builder.copy import (
    CopyOptions,
    Progress,
    copy_image,
    put_blob_retrying,
    reuse_blob,
    transfer_layers,
)
from layerseal.crypto.keywrap import BROKER_SCHEMES, KeyUnwrapper, KeyWrapper
from layerseal.errors import BadInputError
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor, Platform
from layerseal.image.encryption import keys_annotation, wrapped_keys
from layerseal.image.transport import ImageDestination, ImageSource, resolve_manifest


@dataclass(frozen=True)
class RotateReport:
    manifest: Descriptor
    rotated: tuple[tuple[int, str, str], ...]  # (layer, old kid, new kid)
    reencrypted: int


def rotate_keys(
    src: ImageSource,
    dst: ImageDestination,
    client: PublisherClient,
    *,
    retire_previous: bool = False,
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> RotateReport:
    _, _, manifest = resolve_manifest(src, platform)
    rotated: list[tuple[int, str, str]] = []
    new_layers: list[Descriptor] = []
    for i, d in enumerate(manifest.layers):
        found = wrapped_keys(d.annotations) if mt.is_encrypted(d.media_type) else {}
        annotations = dict(d.annotations)
        # packets keep the annotation they came under, so the publisher's ocicrypt config still matches
        for scheme in (s for s in BROKER_SCHEMES if found.get(s)):
            renewed = []
            for blob in found[scheme]:
                old_kid = KeyPacket.parse(blob).kid
                key_id = ResourcePath.parse(old_kid).key_id
                new_packet = client.rotate_key(key_id, packet=blob, retire_previous=retire_previous)
                renewed.append(new_packet)
                rotated.append((i, old_kid, KeyPacket.parse(new_packet).kid))
            name, value = keys_annotation(scheme, renewed)
            annotations[name] = value
        new_layers.append(d.with_changes(annotations=annotations) if annotations != d.annotations else d)
    if not rotated:
        raise BadInputError(
            f"{src.name}: expected layers with broker key packets ({' or '.join(BROKER_SCHEMES)}), seen none"
        )
    transfer_layers(src, dst, manifest.layers, frozenset(), False, CopyOptions(), progress)
    if reuse_blob(src, dst, manifest.config) is None:
        put_blob_retrying(src, dst, manifest.config, CopyOptions().layer_attempts)
    new_manifest = manifest.with_changes(layers=tuple(new_layers))
    written = dst.put_manifest(new_manifest.to_bytes(), new_manifest.effective_media_type)
    return RotateReport(written, tuple(rotated), 0)


def reencrypt(
    src: ImageSource,
    dst: ImageDestination,
    unwrappers: Sequence[KeyUnwrapper],
    wrappers: Sequence[KeyWrapper],
    *,
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> RotateReport:
    """Fresh layer keys for every encrypted layer: decrypt with *unwrappers*, encrypt for *wrappers*."""
    if not unwrappers:
        raise BadInputError(
            "--reencrypt: expected --decryption-key for the current layers (broker KEKs are released only "
            "to attested enclaves, so the publisher must hold a jwe: recipient key), seen none"
        )
    if not wrappers:
        raise BadInputError("--reencrypt: expected --encryption-key for the new layer keys, seen none")
    _, _, manifest = resolve_manifest(src, platform)
    encrypted = tuple(i for i, d in enumerate(manifest.layers) if mt.is_encrypted(d.media_type))
    report = copy_image(
        src,
        dst,
        CopyOptions(
            wrappers=tuple(wrappers),
            unwrappers=tuple(unwrappers),
            encrypt_layers=encrypted,
            platform=platform,
        ),
        progress,
    )
    return RotateReport(report.manifest, (), sum(r.action == "reencrypted" for r in report.layers))
