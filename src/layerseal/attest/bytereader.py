"""Bounds-checked reads from evidence bytes (pure); errors name the field, the offset and what was left."""

from __future__ import annotations

from typing import Literal

from layerseal.errors import BadInputError


class ByteReader:
    """Reads fields in order from *data*, starting at *offset*; *prefix* names the structure in errors."""

    def __init__(
        self, data: bytes, prefix: str, *, offset: int = 0, byteorder: Literal["little", "big"] = "little"
    ) -> None:
        self.data, self.pos, self.prefix, self.byteorder = data, offset, prefix, byteorder

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BadInputError(
                f"{self.prefix} {what}: expected {n} bytes at offset {self.pos}, "
                f"seen {max(0, len(self.data) - self.pos)}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), self.byteorder)

    def sized(self, what: str, limit: int, size_bytes: int = 2) -> bytes:
        """A field preceded by its length, refused above *limit* before anything is read."""
        size = self.uint(size_bytes, f"{what} size")
        if size > limit:
            raise BadInputError(f"{self.prefix} {what}: expected at most {limit} bytes, seen {size}")
        return self.take(size, what)
