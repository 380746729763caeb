"""JSON decoding with clear errors, and encoding byte-compatible with Go's encoding/json.

Manifests we write are hashed, so their bytes matter: Go tools (skopeo, containerd)
write compact JSON with ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, so we do too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from layerseal.errors import BadInputError

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_dumps(value: Any) -> bytes:
    """Serialise compactly as Go's json.Marshal does (dict order is kept as given)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if any(ch in text for ch in _GO_ESCAPES):
        text = "".join(_GO_ESCAPES.get(ch, ch) for ch in text)
    return text.encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def loads_object(data: bytes | str, what: str) -> dict[str, Any]:
    """Parse *data* as a JSON object; *what* names it in the error."""
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{what}: expected JSON, seen invalid data ({exc})") from exc
    if not isinstance(value, dict):
        raise BadInputError(f"{what}: expected a JSON object, seen {type(value).__name__}")
    return value


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
