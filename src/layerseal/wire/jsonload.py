"""Reading JSON documents from outside with clear errors (pure).

Every JSON document layerseal reads from outside (image layouts, manifests, indexes,
configs, annotations, evidence, request bodies) goes through :func:`loads`: nesting
deeper than :data:`MAX_DEPTH` and strings holding a lone UTF-16 surrogate (``"\\ud800"``,
which no UTF-8 encoder can write back) are bad input, not a ``RecursionError`` or a
``UnicodeEncodeError`` later.  :func:`loads_object` adds "must be an object";
:func:`object_or_none` reads text that may hold an object (error bodies, log lines).
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from layerseal.errors import BadInputError

#: deepest nesting accepted; OCI documents and TEE evidence need fewer than 10 levels
MAX_DEPTH = 64

# string literals (unrolled so the regex stays linear), then every byte but brackets
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400: would not serialise back
        raise ValueError(f"number {text[:20]} out of range")
    return value


def _depth(data: bytes) -> int:
    """The deepest bracket nesting of *data*, strings skipped (no recursion, whatever the depth)."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = (1 if b in b"[{" else -1 for b in brackets)
    return max(itertools.accumulate(steps))


def _lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads(data: bytes | str, what: str, *, expected: str = "JSON", max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text (UTF-8 bytes or str) nested at most *max_depth* deep, without lone
    surrogates, NaN/Infinity or numbers beyond a double; *what* names the document in the
    one-line error, *expected* what it should have been."""
    if isinstance(data, str):
        text = data
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadInputError(
                f"{what}: expected JSON text, seen a lone surrogate at character {exc.start}"
            ) from exc
    else:
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInputError(
                f"{what}: expected UTF-8 JSON, seen an invalid byte at offset {exc.start}"
            ) from exc
    depth = _depth(raw)
    if depth > max_depth:
        raise BadInputError(f"{what}: expected JSON nested at most {max_depth} deep, seen {depth} levels")
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as exc:
        raise BadInputError(f"{what}: expected {expected}, seen invalid JSON ({str(exc)[:80]})") from exc
    except RecursionError as exc:  # only if max_depth is above what the interpreter's stack allows
        raise BadInputError(f"{what}: expected JSON nested at most {max_depth} deep, seen deeper") from exc
    if _SURROGATE_ESCAPE.search(raw) and _lone_surrogate(value):
        raise BadInputError(f"{what}: expected strings of Unicode text, seen a lone UTF-16 surrogate escape")
    return value


def loads_object(data: bytes | str, what: str, *, expected: str = "a JSON object") -> dict[str, Any]:
    """Parse *data* as a JSON object; *what* names it in the error, *expected* describes it."""
    value = loads(data, what, expected="JSON" if expected == "a JSON object" else expected)
    if not isinstance(value, dict):
        raise BadInputError(f"{what}: expected {expected}, seen {type(value).__name__}")
    return value


def object_or_none(data: bytes | str) -> dict[str, Any] | None:
    """The JSON object *data* holds, or None for anything else: for text read only for its
    details (an error body, a log line), where other text is no error of its own."""
    try:
        value = loads(data, "JSON text")
    except BadInputError:
        return None
    return value if isinstance(value, dict) else None
