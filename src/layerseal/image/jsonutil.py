"""JSON helpers of image documents: encoding byte-compatible with Go's encoding/json, and
typed field reads with clear errors.

Manifests we write are hashed, so their bytes matter: Go tools (skopeo, containerd)
write compact JSON with ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, so we do too.
Reading JSON text is :mod:`layerseal.wire.jsonload` (:func:`loads`, :func:`loads_object`,
re-exported here for the image code).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from layerseal.errors import BadInputError
from layerseal.wire.jsonload import MAX_DEPTH as MAX_DEPTH
from layerseal.wire.jsonload import loads as loads
from layerseal.wire.jsonload import loads_object as loads_object

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_dumps(value: Any) -> bytes:
    """Serialise compactly as Go's json.Marshal does (dict order is kept as given)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if any(ch in text for ch in _GO_ESCAPES):
        text = "".join(_GO_ESCAPES.get(ch, ch) for ch in text)
    return text.encode("utf-8")


def get_str(obj: Mapping[str, Any], key: str, what: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise BadInputError(f"{what}: field {key!r} is missing (expected a string)")
        return None
    if not isinstance(value, str):
        raise BadInputError(f"{what}: field {key!r}: expected a string, seen {type(value).__name__}")
    return value


def get_int(obj: Mapping[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    if value is None:
        raise BadInputError(f"{what}: field {key!r} is missing (expected an integer)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInputError(f"{what}: field {key!r}: expected an integer, seen {type(value).__name__}")
    return value


def get_str_map(obj: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadInputError(f"{what}: field {key!r}: expected an object of strings")
    return dict(value)


def get_list(obj: Mapping[str, Any], key: str, what: str, *, required: bool = True) -> list[Any]:
    value = obj.get(key)
    if value is None:
        if required:
            raise BadInputError(f"{what}: field {key!r} is missing (expected an array)")
        return []
    if not isinstance(value, list):
        raise BadInputError(f"{what}: field {key!r}: expected an array, seen {type(value).__name__}")
    return value
