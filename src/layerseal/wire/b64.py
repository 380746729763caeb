"""Checked base64 decoding (pure): the one decoder of standard and of URL-safe base64.

Python's decoders accept what a peer should not send (``urlsafe_b64decode`` drops
characters outside its alphabet, ``b64decode`` without ``validate`` too), so every field
read from outside goes through here and fails with ``<what>: expected ..., seen ...``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from layerseal.errors import BadInputError

_URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _length(raw: bytes, what: str, length: int | None) -> bytes:
    if length is not None and len(raw) != length:
        raise BadInputError(f"{what}: expected {length} bytes, seen {len(raw)}")
    return raw


def b64decode(text: Any, what: str, length: int | None = None, *, expected: str = "standard base64") -> bytes:
    """Standard base64 (padded, ``+/``) of exactly *length* bytes when given; *expected*
    says what the field may hold in the error."""
    if not isinstance(text, str):
        raise BadInputError(f"{what}: expected a base64 string, seen {type(text).__name__}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInputError(f"{what}: expected {expected}, seen invalid base64") from exc
    return _length(raw, what, length)


def b64url_decode(value: Any, what: str, length: int | None = None, *, empty: bool = True) -> bytes:
    """URL-safe base64, padding optional (JOSE, KBS tokens); ``empty=False`` refuses ``""``."""
    if not isinstance(value, str) or (not empty and not value):
        seen = "an empty string" if value == "" else type(value).__name__
        raise BadInputError(f"{what}: expected base64url text, seen {seen}")
    text = value.rstrip("=")
    if not _URL_ALPHABET.issuperset(text):
        raise BadInputError(
            f"{what}: expected base64url text, seen characters outside the base64url alphabet"
        )
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise BadInputError(f"{what}: expected base64url text, seen invalid length") from exc
    return _length(raw, what, length)


def b64decode_either(text: str, what: str) -> bytes:
    """Standard or URL-safe base64, padding optional: evidence fields, which attesters
    (Rust ones among them) write in either alphabet."""
    padded = text + "=" * (-len(text) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise BadInputError(f"{what}: expected base64, seen invalid text")
