"""The one-field protobuf messages of keyprovider.KeyProviderService."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerseal.errors import BadInputError
from layerseal.keyprovider.pbcodec import decode_message, decode_varint, encode_message, encode_varint


def test_known_encodings() -> None:
    assert encode_message(b"{}") == b"\x0a\x02{}"
    assert encode_message(b"") == b""
    assert encode_message(b"x" * 300)[:3] == b"\x0a\xac\x02"  # 300 = 0b10_0101100
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert decode_varint(b"\xac\x02", 0) == (300, 2)


@given(st.binary(max_size=5000))
def test_round_trip(payload: bytes) -> None:
    assert decode_message(encode_message(payload)) == payload


def test_empty_message_is_empty_field() -> None:
    assert decode_message(b"") == b""


def test_unknown_fields_are_skipped() -> None:
    # field 2 varint, field 3 fixed64, field 4 fixed32, field 5 bytes, then field 1
    other = b"\x10\x96\x01" + b"\x19" + bytes(8) + b"\x25" + bytes(4) + b"\x2a\x03abc"
    assert decode_message(other + encode_message(b"payload")) == b"payload"
    assert decode_message(encode_message(b"payload") + other) == b"payload"


def test_repeated_field_keeps_last() -> None:
    assert decode_message(encode_message(b"first") + encode_message(b"second")) == b"second"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\x0a\x05abc", "field 1: expected 5 bytes, seen 3"),
        (b"\x0a", "expected a complete varint"),
        (b"\x0a" + b"\xff" * 11, "at most 10 bytes"),
        (b"\x08\x01", "field 1: expected bytes (wire type 2), seen wire type 0"),
        (b"\x0b", "expected wire type 0, 1, 2 or 5, seen 3"),
        (b"\x02\x00", "field number >= 1"),
        (b"\x19\x00", "complete fixed-size field"),
    ],
)
def test_malformed_messages(data: bytes, needle: str) -> None:
    with pytest.raises(BadInputError) as info:
        decode_message(data)
    assert needle in str(info.value)


def test_negative_varint_refused() -> None:
    with pytest.raises(BadInputError, match="non-negative"):
        encode_varint(-1)
