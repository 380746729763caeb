"""Image manifests and indexes, OCI and Docker schema 2, parsed from and written to bytes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, Self

from layerseal.errors import BadInputError
from layerseal.image import jsonutil as J
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor, Platform
from layerseal.image.digest import Digest

_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: manifests larger than this are refused before parsing (distribution uses 4 MiB)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def _check_size(data: bytes, what: str) -> None:
    if len(data) > MAX_MANIFEST_BYTES:
        raise BadInputError(f"{what}: expected at most {MAX_MANIFEST_BYTES} bytes, seen {len(data)}")


def _load(data: bytes, what: str) -> dict[str, Any]:
    _check_size(data, what)
    return J.loads_object(data, what)


def _common_fields(
    obj: Mapping[str, Any], what: str, media_types: frozenset[str], known: tuple[str, ...]
) -> dict[str, Any]:
    """The checked fields manifests and indexes share (schema version 2, media type among
    *media_types* or none, annotations), and the unknown ones (``extra``), by field name."""
    version = J.get_int(obj, "schemaVersion", what)
    if version != 2:
        raise BadInputError(f"{what}: field 'schemaVersion': expected 2, seen {version}")
    media_type = J.get_str(obj, "mediaType", what, required=False)
    if media_type is not None and media_type not in media_types:
        raise BadInputError(
            f"{what}: field 'mediaType': expected one of {sorted(media_types)}, seen {media_type!r}"
        )
    return {
        "media_type": media_type,
        "annotations": MappingProxyType(J.get_str_map(obj, "annotations", what)),
        "extra": MappingProxyType({k: v for k, v in obj.items() if k not in known}),
    }


class _Document:
    """What manifests and indexes share: reading from and writing to bytes, the common fields."""

    _WHAT: ClassVar[str]
    media_type: str | None
    annotations: Mapping[str, str]
    extra: Mapping[str, Any]

    @classmethod
    def from_bytes(cls, data: bytes, what: str | None = None) -> Self:
        what = what or cls._WHAT
        return cls.from_json(_load(data, what), what)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str) -> Self:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def _document_json(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """*body* (the fields of this kind of document) between the common fields, in Go's order."""
        out: dict[str, Any] = {"schemaVersion": 2}
        if self.media_type is not None:
            out["mediaType"] = self.media_type
        out.update(body)
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    def to_bytes(self) -> bytes:
        return J.go_dumps(self.to_json())

    def with_changes(self, **changes: Any) -> Self:
        return replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class Manifest(_Document):
    """An image manifest: one config descriptor and an ordered list of layers."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str | None = mt.OCI_MANIFEST
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    _KNOWN = ("schemaVersion", "mediaType", "artifactType", "config", "layers", "subject", "annotations")
    _WHAT = "manifest"

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_MANIFEST

    @property
    def effective_media_type(self) -> str:
        return self.media_type or mt.OCI_MANIFEST

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "manifest") -> Manifest:
        common = _common_fields(obj, what, mt.MANIFEST_TYPES, cls._KNOWN)
        if "manifests" in obj:
            raise BadInputError(f"{what}: expected an image manifest, seen an index (field 'manifests')")
        if "config" not in obj:
            raise BadInputError(f"{what}: field 'config' is missing (expected a descriptor)")
        layers = J.get_list(obj, "layers", what)
        subject = obj.get("subject")
        return cls(
            config=Descriptor.from_json(obj["config"], f"{what}.config"),
            layers=tuple(Descriptor.from_json(d, f"{what}.layers[{i}]") for i, d in enumerate(layers)),
            subject=Descriptor.from_json(subject, f"{what}.subject") if subject is not None else None,
            artifact_type=J.get_str(obj, "artifactType", what, required=False),
            **common,
        )

    def to_json(self) -> dict[str, Any]:
        docker = self.is_docker
        body: dict[str, Any] = {}
        if self.artifact_type is not None:
            body["artifactType"] = self.artifact_type
        body["config"] = self.config.to_json(docker)
        body["layers"] = [d.to_json(docker) for d in self.layers]
        if self.subject is not None:
            body["subject"] = self.subject.to_json(docker)
        return self._document_json(body)


@dataclass(frozen=True)
class Index(_Document):
    """An image index (or Docker manifest list): manifests for several platforms."""

    manifests: tuple[Descriptor, ...]
    media_type: str | None = mt.OCI_INDEX
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    _KNOWN = ("schemaVersion", "mediaType", "manifests", "annotations")
    _WHAT = "index"

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], what: str = "index") -> Index:
        common = _common_fields(obj, what, mt.INDEX_TYPES, cls._KNOWN)
        items = J.get_list(obj, "manifests", what)
        return cls(
            manifests=tuple(Descriptor.from_json(d, f"{what}.manifests[{i}]") for i, d in enumerate(items)),
            **common,
        )

    def to_json(self) -> dict[str, Any]:
        docker = self.media_type == mt.DOCKER_MANIFEST_LIST
        return self._document_json({"manifests": [d.to_json(docker) for d in self.manifests]})

    def select(self, platform: Platform) -> Descriptor:
        """The manifest for *platform* (variant matched when the request names one)."""
        for d in self.manifests:
            p = d.platform
            if p is None or p.os != platform.os or p.architecture != platform.architecture:
                continue
            if platform.variant is None or p.variant == platform.variant:
                return d
        seen = ", ".join(str(d.platform) for d in self.manifests if d.platform) or "none"
        raise BadInputError(f"index: expected a manifest for platform {platform}, seen {seen}")


def detect_media_type(data: bytes, declared: str | None = None, what: str = "manifest") -> str:
    """The media type of manifest bytes: the declared one if any, else from its fields."""
    obj = _load(data, what)
    inner = obj.get("mediaType")
    if isinstance(inner, str) and inner:
        return inner
    if declared and declared in (mt.MANIFEST_TYPES | mt.INDEX_TYPES):
        return declared
    return mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST


def parse_any(data: bytes, declared: str | None = None, what: str = "manifest") -> Manifest | Index:
    kind = detect_media_type(data, declared, what)
    if kind in mt.INDEX_TYPES:
        return Index.from_bytes(data, what)
    if kind in mt.MANIFEST_TYPES:
        return Manifest.from_bytes(data, what)
    raise BadInputError(f"{what}: expected a manifest or index media type, seen {kind!r}")


def descriptor_for(data: bytes, media_type: str, **kw: Any) -> Descriptor:
    return Descriptor(media_type=media_type, digest=Digest.of(data), size=len(data), **kw)
