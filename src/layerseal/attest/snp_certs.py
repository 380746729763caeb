"""The SEV-SNP certificate table (GHCB spec, "SNP Extended Guest Request"), pure.

The host hands it to the guest with the report (configfs-tsm ``auxblob``,
``SNP_GET_EXT_REPORT``): entries of a 16-byte GUID, a 32-bit offset and length (little
endian), ended by an all-zero entry, then the certificates (DER) at those offsets.  GUIDs
are stored in RFC 4122 byte order, as AMD's sev-tool writes them with ``uuid_parse``.
"""

from __future__ import annotations

import struct
import uuid

from layerseal.errors import BadInputError

CERT_TYPES = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "VCEK",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "VLEK",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ASK",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ARK",
    uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"): "CRL",
}
ENTRY_SIZE = 24
MAX_ENTRIES = 16


def parse_table(blob: bytes, what: str = "snp certificate table") -> list[tuple[str, bytes]]:
    """``[(type, DER), ...]`` of the known certificates (CRL and unknown GUIDs are skipped)."""
    out: list[tuple[str, bytes]] = []
    for i in range(MAX_ENTRIES + 1):
        start = i * ENTRY_SIZE
        if start + ENTRY_SIZE > len(blob):
            raise BadInputError(
                f"{what} entry {i}: expected {ENTRY_SIZE} bytes, seen {max(0, len(blob) - start)}"
            )
        guid, offset, length = struct.unpack_from("<16sII", blob, start)
        if guid == bytes(16) and offset == 0 and length == 0:
            return out
        if offset + length > len(blob):
            raise BadInputError(
                f"{what} entry {i}: expected a certificate inside the {len(blob)}-byte table, "
                f"seen offset {offset} length {length}"
            )
        kind = CERT_TYPES.get(uuid.UUID(bytes=guid))
        if kind is not None and kind != "CRL":
            out.append((kind, blob[offset : offset + length]))
    raise BadInputError(f"{what}: expected at most {MAX_ENTRIES} entries and a zero terminator, seen more")


def build_table(certs: list[tuple[str, bytes]]) -> bytes:
    """The table for *certs* (what a host writes; tests use it to serve captured certificates)."""
    guids = {name: guid for guid, name in CERT_TYPES.items()}
    header = bytearray()
    body = bytearray()
    base = (len(certs) + 1) * ENTRY_SIZE
    for kind, der in certs:
        header += struct.pack("<16sII", guids[kind].bytes, base + len(body), len(der))
        body += der
    return bytes(header) + bytes(ENTRY_SIZE) + bytes(body)
