"""A readable summary of an image: layers, sizes, media types and how each is encrypted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layerseal.errors import BadInputError
from layerseal.image import jsonutil as J
from layerseal.image import mediatypes as mt
from layerseal.image.config import ImageConfig
from layerseal.image.encryption import ANNOTATION_PUBOPTS, PublicOptions, wrapped_keys
from layerseal.image.manifest import Manifest
from layerseal.wire.b64 import b64url_decode


@dataclass(frozen=True)
class KeyInfo:
    scheme: str
    recipients: tuple[str, ...]  # e.g. "RSA-OAEP", "ECDH-ES+A256KW", "kbs:///t/layer-key/3"


@dataclass(frozen=True)
class LayerSummary:
    index: int
    digest: str
    size: int
    media_type: str
    encrypted: bool
    cipher: str | None
    keys: tuple[KeyInfo, ...]
    diff_id: str | None


@dataclass(frozen=True)
class IndexEntry:
    platform: str  # "linux/arm64/v8", or "" when the entry names none
    digest: str
    media_type: str


@dataclass(frozen=True)
class IndexSummary:
    """The index the image was chosen from, when the reference names one."""

    digest: str
    media_type: str
    entries: tuple[IndexEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "mediaType": self.media_type,
            "manifests": [
                {"platform": e.platform, "digest": e.digest, "mediaType": e.media_type} for e in self.entries
            ],
        }


@dataclass(frozen=True)
class ImageSummary:
    name: str
    manifest_digest: str
    media_type: str
    config_digest: str
    layers: tuple[LayerSummary, ...]
    history: tuple[dict[str, Any], ...]
    index: IndexSummary | None = None

    def to_json(self) -> dict[str, Any]:
        out = self._image_json()
        if self.index is not None:
            out["index"] = self.index.to_json()
        return out

    def _image_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "manifestDigest": self.manifest_digest,
            "mediaType": self.media_type,
            "config": self.config_digest,
            "layers": [
                {
                    "index": layer.index,
                    "digest": layer.digest,
                    "size": layer.size,
                    "mediaType": layer.media_type,
                    "encrypted": layer.encrypted,
                    "cipher": layer.cipher,
                    "diffID": layer.diff_id,
                    "keys": [{"scheme": k.scheme, "recipients": list(k.recipients)} for k in layer.keys],
                }
                for layer in self.layers
            ],
            "history": list(self.history),
        }


def _describe(scheme: str, blob: bytes) -> tuple[str, ...]:
    """Best-effort description of a wrapped-key blob's recipients; never raises."""
    try:
        obj = J.loads(blob, "wrapped key")
    except BadInputError:
        return ("(opaque)",)
    if not isinstance(obj, dict):
        return ("(opaque)",)
    try:
        if "kid" in obj:  # Confidential Containers key packet
            return (str(obj["kid"]),)
        protected: dict[str, Any] = (
            J.loads(b64url_decode(obj.get("protected"), "protected"), "protected")
            if obj.get("protected")
            else {}
        )
        if "recipients" in obj:
            return tuple(
                str({**protected, **(r.get("header") or {})}.get("alg", "?")) for r in obj["recipients"]
            )
        return (str({**protected, **(obj.get("header") or {})}.get("alg", "?")),)
    except (ValueError, TypeError, AttributeError, BadInputError):
        return ("(unreadable)",)


def summarize(
    name: str, manifest_digest: str, manifest: Manifest, config: ImageConfig | None
) -> ImageSummary:
    diff_ids = config.diff_ids if config else ()
    layers = []
    for i, d in enumerate(manifest.layers):
        cipher = None
        if ANNOTATION_PUBOPTS in d.annotations:
            try:
                cipher = PublicOptions.from_annotation(d.annotations[ANNOTATION_PUBOPTS]).cipher
            except Exception:  # summary stays best-effort on garbled annotations
                cipher = "(invalid pubopts)"
        try:
            keys = tuple(
                KeyInfo(scheme, tuple(r for blob in blobs for r in _describe(scheme, blob)))
                for scheme, blobs in sorted(wrapped_keys(d.annotations).items())
            )
        except Exception:
            keys = (KeyInfo("(invalid)", ()),)
        layers.append(
            LayerSummary(
                index=i,
                digest=str(d.digest),
                size=d.size,
                media_type=d.media_type,
                encrypted=mt.is_encrypted(d.media_type),
                cipher=cipher,
                keys=keys,
                diff_id=str(diff_ids[i]) if i < len(diff_ids) else None,
            )
        )
    return ImageSummary(
        name=name,
        manifest_digest=manifest_digest,
        media_type=manifest.effective_media_type,
        config_digest=str(manifest.config.digest),
        layers=tuple(layers),
        history=tuple(dict(h) for h in (config.history if config else ())),
    )
