"""RFC 8785 JSON Canonicalization Scheme for JSON without fractional numbers.

KBS binds the nonce and the enclave public key into evidence through the SHA-384 of the
canonical form, so every byte matters.  Members are sorted by their UTF-16 code units,
strings use the minimal escapes of ECMAScript's ``JSON.stringify``.  Integers are written
as ECMAScript does (exactly, within +-2**53); other numbers are refused rather than
risk a different rendering than the peer's.

Hand-written rather than the ``rfc8785`` package (0.1.4): that one renders fractional and
large floats (``1.5``, ``1e+21``, ``2.0**54``), which RCAR's binding refuses here, refuses
the integers +-2**53, which this accepts, has no nesting limit and raises its own errors;
keys, strings, escapes, ``-0`` and integral floats come out the same.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Mapping, Sequence
from typing import Any

from layerseal.errors import BadInputError

_MAX_SAFE = 2**53
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _utf16_key(text: str) -> bytes:
    return text.encode("utf-16-be", "surrogatepass")


def _string_slow(text: str) -> str:
    parts = ['"']
    for ch in text:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            parts.append(esc)
        elif ch < " ":
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


# The C encoder of the json module escapes exactly what ECMAScript's JSON.stringify does
# (quote, backslash, \b \f \n \r \t, other controls as lowercase \u00xx); it is checked
# against the explicit rules at import and used only if it agrees.
_encode = getattr(json.encoder, "c_encode_basestring", None) or _string_slow
_PROBE = 'a"\\\b\f\n\r\t\x00\x1f\x7f\u2028\u00e9\U0001f600'
if _encode(_PROBE) != _string_slow(_PROBE):
    _encode = _string_slow


def _string(text: str, out: list[str]) -> None:
    out.append(_encode(text))


def _value(value: Any, out: list[str], depth: int) -> None:
    if depth > 64:
        raise BadInputError("JSON canonicalisation: expected nesting depth <= 64, seen deeper")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > _MAX_SAFE:
            raise BadInputError(f"JSON canonicalisation: expected |integer| <= 2**53, seen {value}")
        out.append(str(value))
    elif isinstance(value, float):
        if not value.is_integer() or abs(value) > _MAX_SAFE:
            raise BadInputError(f"JSON canonicalisation: expected integral numbers only, seen {value!r}")
        out.append(str(int(value)))
    elif isinstance(value, str):
        _string(value, out)
    elif isinstance(value, Mapping):
        out.append("{")
        items = sorted(value.items(), key=lambda kv: _utf16_key(_check_key(kv[0])))
        for i, (k, v) in enumerate(items):
            if i:
                out.append(",")
            _string(k, out)
            out.append(":")
            _value(v, out, depth + 1)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _value(item, out, depth + 1)
        out.append("]")
    else:
        raise BadInputError(f"JSON canonicalisation: expected a JSON value, seen {type(value).__name__}")


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise BadInputError(f"JSON canonicalisation: expected string member names, seen {type(key).__name__}")
    return key


def canonicalize(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of *value*."""
    out: list[str] = []
    _value(value, out, 0)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot be canonical UTF-8
        raise BadInputError("JSON canonicalisation: expected valid Unicode, seen a lone surrogate") from exc
