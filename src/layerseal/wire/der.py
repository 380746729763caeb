"""DER (pure): reading the definite-length TLVs of one level, with one-line errors, and
writing TLVs, INTEGERs and OBJECT IDENTIFIERs.

Enough for the few ASN.1 structures layerseal reads or writes itself (PKCS#7 envelopes,
Intel's SGX certificate extension); certificates and CRLs are ``cryptography``'s.
"""

from __future__ import annotations

from layerseal.errors import BadInputError


class DerReader:
    """The TLVs of one level of *data*, in order; *what* names the structure in errors."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def more(self) -> bool:
        return self.pos < len(self.data)

    def next(self, expect: int | None = None) -> tuple[int, bytes]:
        """The next (tag, content); with *expect*, a different tag is refused."""
        d, p = self.data, self.pos
        if p + 2 > len(d):
            raise BadInputError(f"{self.what}: expected a DER element at byte {p}, seen the end")
        tag, first = d[p], d[p + 1]
        p += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 4 or p + count > len(d):
                raise BadInputError(f"{self.what}: expected a definite DER length at byte {p - 1}")
            length = int.from_bytes(d[p : p + count], "big")
            p += count
        if p + length > len(d):
            raise BadInputError(
                f"{self.what}: expected {length} bytes of DER content at byte {p}, seen {len(d) - p}"
            )
        if expect is not None and tag != expect:
            raise BadInputError(
                f"{self.what}: expected DER tag 0x{expect:02x} at byte {self.pos}, seen 0x{tag:02x}"
            )
        self.pos = p + length
        return tag, d[p : p + length]


def der_items(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """Every (tag, content) of one level of *data*."""
    reader = DerReader(data, what)
    items = []
    while reader.more():
        items.append(reader.next())
    return items


# --------------------------------------------------------------------------- writing

INTEGER, OID = 0x02, 0x06


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(value)) + value


def int_body(n: int) -> bytes:
    """The content octets of INTEGER *n* (two's complement, minimal)."""
    return n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)


def oid_body(dotted: str) -> bytes:
    """The content octets of the OBJECT IDENTIFIER *dotted* (base-128 arcs)."""
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def der_int(n: int) -> bytes:
    return tlv(INTEGER, int_body(n))


def der_oid(dotted: str) -> bytes:
    return tlv(OID, oid_body(dotted))
