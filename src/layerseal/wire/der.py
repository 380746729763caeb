"""Reading DER (pure): the definite-length TLVs of one level, with one-line errors.

Enough for the few ASN.1 structures layerseal reads itself (PKCS#7 envelopes, Intel's SGX
certificate extension); certificates and CRLs are ``cryptography``'s.
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
