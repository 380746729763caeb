"""The protobuf wire form of the keyprovider gRPC messages (pure).

Each message of ``keyprovider.KeyProviderService`` has a single ``bytes`` field number 1
carrying the JSON request or reply: on the wire ``0x0a``, a varint length, the bytes.
proto3 omits an empty field, skips unknown fields, and a repeated scalar keeps the last
value; this codec does the same, so no generated code is needed.
"""

from __future__ import annotations

from layerseal.errors import BadInputError

_FIELD1_BYTES = 0x0A  # field 1, wire type 2 (length-delimited)
_MAX_VARINT_BYTES = 10


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise BadInputError(f"protobuf varint: expected a non-negative integer, seen {value}")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at *pos* and the position after it."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise BadInputError(f"protobuf message: expected a complete varint at byte {pos}, seen the end")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise BadInputError(f"protobuf message: expected a varint of at most 10 bytes at byte {pos}, seen more")


def encode_message(payload: bytes) -> bytes:
    """A one-field message carrying *payload* (empty payload = empty message, as proto3 does)."""
    if not payload:
        return b""
    return bytes([_FIELD1_BYTES]) + encode_varint(len(payload)) + payload


def decode_message(data: bytes) -> bytes:
    """Field 1 of a message (b"" when absent); other fields are skipped."""
    pos = 0
    found = b""
    while pos < len(data):
        key, pos = decode_varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise BadInputError(f"protobuf message: expected a field number >= 1 at byte {pos}, seen 0")
        if wire == 0:
            _, pos = decode_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = decode_varint(data, pos)
            if pos + length > len(data):
                raise BadInputError(
                    f"protobuf message: field {field}: expected {length} bytes, seen {len(data) - pos}"
                )
            if field == 1:
                found = data[pos : pos + length]
            pos += length
        else:
            raise BadInputError(
                f"protobuf message: field {field}: expected wire type 0, 1, 2 or 5, seen {wire}"
            )
        if field == 1 and wire != 2:
            raise BadInputError(
                f"protobuf message: field 1: expected bytes (wire type 2), seen wire type {wire}"
            )
        if pos > len(data):
            raise BadInputError("protobuf message: expected a complete fixed-size field, seen the end")
    return found
