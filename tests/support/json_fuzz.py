"""Structure-aware mutation of JSON documents for fuzz tests (seeded, no pytest dependency).

:func:`mutate_json` takes a parsed document and returns new JSON *text* (bytes) with one
change at a random place in the tree: deep nesting (the ~1,000 levels that used to
crash the parsers), lone UTF-16 surrogate escapes in keys or values, other types, huge
or non-finite numbers, removed or duplicated members, or damage to the text itself
(truncation, invalid UTF-8, a BOM, NaN).
"""

from __future__ import annotations

import json
import random
from typing import Any

DEPTHS = (65, 200, 1000, 5000)


def _containers(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    out: list[tuple[tuple[Any, ...], Any]] = []
    if isinstance(doc, dict):
        out.append((path, doc))
        for k, v in doc.items():
            out.extend(_containers(v, (*path, k)))
    elif isinstance(doc, list):
        out.append((path, doc))
        for i, v in enumerate(doc):
            out.extend(_containers(v, (*path, i)))
    return out


_DEEP_MARK = "\x00deep\x00"


def _deep_text(rng: random.Random) -> str:
    depth = rng.choice(DEPTHS)
    if rng.random() < 0.5:
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def mutate_json(rng: random.Random, doc: Any) -> tuple[bytes, str]:
    """One mutation of *doc* (left unchanged), as JSON text bytes, and its label."""
    doc = json.loads(json.dumps(doc))
    places = _containers(doc)
    path, node = rng.choice(places)
    where = "/" + "/".join(str(p) for p in path)
    op = rng.randrange(10)
    keys: list[Any] = list(node) if isinstance(node, dict) else list(range(len(node)))
    key: Any = rng.choice(keys) if keys else None
    if op <= 1:
        if isinstance(node, dict):
            node[key if key is not None and rng.random() < 0.7 else "x-deep"] = _DEEP_MARK
        else:
            node.append(_DEEP_MARK)
        text = json.dumps(doc).replace(json.dumps(_DEEP_MARK), _deep_text(rng), 1)
        return text.encode(), f"deep nesting at {where}"
    if op == 2:
        lone = rng.choice(["\ud800", "\udfff", "\udc00x", "a\ud83d"])
        if isinstance(node, dict) and key is not None and rng.random() < 0.3:
            node[lone] = node.pop(key)
            return json.dumps(doc).encode(), f"lone surrogate in a key at {where}"
        if key is not None and isinstance(node[key], str):
            value = node[key]
            i = rng.randrange(len(value) + 1)
            node[key] = value[:i] + lone + value[i:]
        elif key is not None:
            node[key] = lone
        else:
            return json.dumps(lone).encode(), "lone surrogate document"
        return json.dumps(doc).encode(), f"lone surrogate at {where}/{key}"
    if op == 3 and key is not None:
        node[key] = rng.choice([None, True, 0, -1, 2**64, 2.5, "", "x" * 300, [], {}, [None], {"": None}])
        return json.dumps(doc).encode(), f"type change at {where}/{key}"
    if op == 4 and key is not None:
        node[key] = _DEEP_MARK
        token = rng.choice(["1e400", "-1e400", "NaN", "Infinity", "1" + "0" * 400, "-0", "1.0"])
        return json.dumps(doc).replace(
            json.dumps(_DEEP_MARK), token, 1
        ).encode(), f"number {token[:8]} at {where}"
    if op == 5 and key is not None:
        if isinstance(node, dict):
            del node[key]
        else:
            node.pop(key)
        return json.dumps(doc).encode(), f"removed {where}/{key}"
    if op == 6 and isinstance(node, dict) and key is not None:
        text = json.dumps(doc)
        member = json.dumps({key: node[key]})[1:-1]
        at = text.find(member)
        if at >= 0:
            dup = json.dumps({key: rng.choice([None, 1, "x", [], {}])})[1:-1]
            return (text[:at] + dup + "," + text[at:]).encode(), f"duplicate member {where}/{key}"
    text = json.dumps(doc).encode()
    damage = rng.randrange(5)
    if damage == 0:
        return text[: rng.randrange(1, len(text))], "truncated text"
    if damage == 1:
        i = rng.randrange(len(text))
        return text[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + text[i:], "invalid UTF-8"
    if damage == 2:
        return b"\xef\xbb\xbf" + text, "byte order mark"
    if damage == 3:
        return json.dumps(doc, ensure_ascii=False).encode("utf-16"), "UTF-16 text"
    return ("[" * rng.choice(DEPTHS)).encode(), "unterminated deep array"
