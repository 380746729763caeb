"""A minimal DER tree for structure-aware certificate mutation in tests.

Parses DER into nodes (tag, content or children), lets a test change a node, and
re-encodes with correct lengths, so a mutated certificate is well-formed DER whose
*meaning* is wrong (another version, algorithm, key type, extension value...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from layerseal.wire.der import encode_length, int_body, oid_body


@dataclass
class Node:
    tag: int
    content: bytes = b""
    children: list[Node] | None = None
    #: extra bytes appended to the encoded length (a "length lie"), 0 for honest DER
    length_delta: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def constructed(self) -> bool:
        return self.children is not None

    def encode(self) -> bytes:
        body = b"".join(c.encode() for c in self.children) if self.children is not None else self.content
        return bytes([self.tag]) + encode_length(max(0, len(body) + self.length_delta)) + body

    def walk(self) -> list[Node]:
        out = [self]
        for c in self.children or ():
            out.extend(c.walk())
        return out

    def copy(self) -> Node:
        return Node(
            self.tag,
            self.content,
            [c.copy() for c in self.children] if self.children is not None else None,
            self.length_delta,
        )


def _read(data: bytes, i: int) -> tuple[Node, int]:
    tag = data[i]
    length = data[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[i : i + n], "big")
        i += n
    body = data[i : i + length]
    if len(body) != length:
        raise ValueError("truncated DER")
    if tag & 0x20:
        children, j = [], 0
        while j < len(body):
            child, j = _read(body, j)
            children.append(child)
        return Node(tag, children=children), i + length
    return Node(tag, content=body), i + length


def parse(data: bytes) -> Node:
    node, end = _read(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after DER")
    return node


def oid(dotted: str) -> Node:
    """An OBJECT IDENTIFIER node."""
    return Node(0x06, oid_body(dotted))


def integer(value: int) -> Node:
    return Node(0x02, int_body(value))


def seq(*children: Node) -> Node:
    return Node(0x30, children=list(children))


def octet_string(data: bytes) -> Node:
    return Node(0x04, data)
