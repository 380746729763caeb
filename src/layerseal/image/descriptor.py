"""Content descriptors and platforms (image-spec ``descriptor.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from layerseal.errors import BadInputError
from layerseal.image import jsonutil as J
from layerseal.image.digest import Digest

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def _frozen(m: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(m)) if m else _EMPTY


@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str
    variant: str | None = None
    os_version: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    _KNOWN = ("architecture", "os", "os.version", "variant")

    @classmethod
    def from_json(cls, obj: Any, what: str = "platform") -> Platform:
        if not isinstance(obj, dict):
            raise BadInputError(f"{what}: expected an object, seen {type(obj).__name__}")
        return cls(
            architecture=J.get_str(obj, "architecture", what) or "",
            os=J.get_str(obj, "os", what) or "",
            variant=J.get_str(obj, "variant", what, required=False),
            os_version=J.get_str(obj, "os.version", what, required=False),
            extra=_frozen({k: v for k, v in obj.items() if k not in cls._KNOWN}),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version is not None:
            out["os.version"] = self.os_version
        if "os.features" in self.extra:
            out["os.features"] = self.extra["os.features"]
        if self.variant is not None:
            out["variant"] = self.variant
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` as in ``--platform linux/arm64/v8``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise BadInputError(f"platform: expected 'os/arch[/variant]', seen {text!r}")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def host(cls) -> Platform:
        """This machine, in OCI terms (``linux/amd64`` on x86_64)."""
        import platform as _platform

        machine = _platform.machine()
        return cls(os="linux", architecture=_HOST_ARCH.get(machine, machine))


@dataclass(frozen=True)
class Descriptor:
    """A typed reference to content: media type, digest and size, plus optional metadata."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    _KNOWN = ("mediaType", "digest", "size", "annotations", "urls", "platform", "artifactType")

    def __post_init__(self) -> None:
        if self.size < 0:
            raise BadInputError(f"descriptor {self.digest}: expected size >= 0, seen {self.size}")
        if not isinstance(self.annotations, MappingProxyType):
            object.__setattr__(self, "annotations", _frozen(self.annotations))

    @classmethod
    def from_json(cls, obj: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise BadInputError(f"{what}: expected an object, seen {type(obj).__name__}")
        digest_text = J.get_str(obj, "digest", what) or ""
        try:
            digest = Digest.parse(digest_text)
        except BadInputError as exc:
            raise BadInputError(f"{what}: field 'digest': {exc}") from exc
        urls = J.get_list(obj, "urls", what, required=False)
        if not all(isinstance(u, str) for u in urls):
            raise BadInputError(f"{what}: field 'urls': expected an array of strings")
        platform = obj.get("platform")
        return cls(
            media_type=J.get_str(obj, "mediaType", what) or "",
            digest=digest,
            size=J.get_int(obj, "size", what),
            annotations=J.get_str_map(obj, "annotations", what),
            urls=tuple(urls),
            platform=Platform.from_json(platform, f"{what}.platform") if platform is not None else None,
            artifact_type=J.get_str(obj, "artifactType", what, required=False),
            extra=_frozen({k: v for k, v in obj.items() if k not in cls._KNOWN}),
        )

    def to_json(self, docker: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type}
        # Go struct order differs between the OCI and Docker descriptor types.
        if docker:
            out["size"] = self.size
            out["digest"] = str(self.digest)
        else:
            out["digest"] = str(self.digest)
            out["size"] = self.size
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if "data" in self.extra:
            out["data"] = self.extra["data"]
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    def with_changes(self, **changes: Any) -> Descriptor:
        return replace(self, **changes)
