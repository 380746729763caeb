"""The image configuration blob: only the parts layerseal reads or changes are typed."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from layerseal.errors import BadInputError
from layerseal.image import jsonutil as J
from layerseal.image.digest import Digest


@dataclass(frozen=True)
class ImageConfig:
    """An image config; ``raw`` keeps every field (and its order) for lossless round trips."""

    raw: Mapping[str, Any]

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "image config") -> ImageConfig:
        obj = J.loads_object(data, what)
        rootfs = obj.get("rootfs")
        if rootfs is not None:
            if not isinstance(rootfs, dict):
                raise BadInputError(
                    f"{what}: field 'rootfs': expected an object, seen {type(rootfs).__name__}"
                )
            for i, d in enumerate(J.get_list(rootfs, "diff_ids", f"{what}.rootfs", required=False)):
                try:
                    Digest.parse(d)
                except BadInputError as exc:
                    raise BadInputError(f"{what}: rootfs.diff_ids[{i}]: {exc}") from exc
        for i, entry in enumerate(J.get_list(obj, "history", what, required=False)):
            if not isinstance(entry, dict):
                raise BadInputError(f"{what}: history[{i}]: expected an object, seen {type(entry).__name__}")
        return cls(obj)

    @property
    def diff_ids(self) -> tuple[Digest, ...]:
        rootfs = self.raw.get("rootfs") or {}
        return tuple(Digest.parse(d) for d in rootfs.get("diff_ids") or ())

    @property
    def history(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(self.raw.get("history") or ())

    @property
    def platform_os(self) -> str | None:
        v = self.raw.get("os")
        return v if isinstance(v, str) else None

    @property
    def architecture(self) -> str | None:
        v = self.raw.get("architecture")
        return v if isinstance(v, str) else None

    @property
    def runtime(self) -> Mapping[str, Any]:
        """The ``config`` section (Entrypoint, Cmd, Env, WorkingDir, User)."""
        v = self.raw.get("config")
        return v if isinstance(v, dict) else {}

    def with_layer(self, diff_id: Digest, history: Mapping[str, Any] | None) -> ImageConfig:
        raw = copy.deepcopy(dict(self.raw))
        rootfs = raw.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        rootfs.setdefault("diff_ids", []).append(str(diff_id))
        if history is not None:
            raw.setdefault("history", []).append(dict(history))
        return ImageConfig(raw)

    def to_bytes(self) -> bytes:
        return J.go_dumps(dict(self.raw))
