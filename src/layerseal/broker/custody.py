"""Key custody: sealing key material at rest.

``KeyCustody`` is the seam a PKCS#11 backend plugs into.  ``MasterKeyCustody`` does
envelope encryption: a fresh data key per record (AES-256-GCM) wrapped under the master
key (AES-256-GCM); both layers bind the caller's AAD (record id and version), so a sealed
blob copied onto another row does not open.  Format::

    0x01 | master key id (8) | nonce (12) | wrapped data key (48) | nonce (12) | ciphertext+tag
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from layerseal.errors import IntegrityError, MisuseError

_VERSION = b"\x01"
_HEADER = 1 + 8 + 12 + 48 + 12


class KeyCustody(Protocol):
    """Seals and unseals secrets; AAD must be the same for both."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def unseal(self, sealed: bytes, aad: bytes) -> bytes: ...


def record_aad(kind: str, record_id: str, version: int = 0) -> bytes:
    """The AAD binding a sealed blob to its database row."""
    return f"layerseal:{kind}:{record_id}:{version}".encode()


class MasterKeyCustody:
    """Envelope encryption under a 32-byte master key held in memory only."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise MisuseError(f"master key: expected 32 bytes, seen {len(master_key)}")
        self._master = AESGCM(master_key)
        self.key_id = hashlib.sha256(b"layerseal master key id\0" + master_key).digest()[:8]

    def __repr__(self) -> str:
        return f"MasterKeyCustody(key_id={self.key_id.hex()})"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        data_key = AESGCM.generate_key(bit_length=256)
        n1, n2 = os.urandom(12), os.urandom(12)
        wrapped = self._master.encrypt(n1, data_key, aad)
        body = AESGCM(data_key).encrypt(n2, plaintext, aad)
        return _VERSION + self.key_id + n1 + wrapped + n2 + body

    def unseal(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < _HEADER + 16 or sealed[:1] != _VERSION:
            raise IntegrityError(
                f"sealed key: expected format 1 and >= {_HEADER + 16} bytes, seen {len(sealed)} bytes"
            )
        key_id = sealed[1:9]
        if key_id != self.key_id:
            raise IntegrityError(
                f"sealed key: expected master key id {self.key_id.hex()}, seen {key_id.hex()} "
                "(the broker runs with a different master key)"
            )
        n1, wrapped, n2, body = sealed[9:21], sealed[21:69], sealed[69:81], sealed[81:]
        try:
            data_key = self._master.decrypt(n1, wrapped, aad)
            return AESGCM(data_key).decrypt(n2, body, aad)
        except InvalidTag as exc:
            raise IntegrityError(
                "sealed key: expected authentic ciphertext for this record, seen a forgery"
            ) from exc
