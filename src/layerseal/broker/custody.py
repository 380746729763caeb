"""Key custody: sealing key material at rest.

``KeyCustody`` is the seam custody backends plug into.  ``MasterKeyCustody`` does
envelope encryption: a fresh data key per record (AES-256-GCM) wrapped under the master
key (AES-256-GCM); both layers bind the caller's AAD (record id and version), so a sealed
blob copied onto another row does not open.  Format::

    0x01 | master key id (8) | nonce (12) | wrapped data key (48) | nonce (12) | ciphertext+tag

``Pkcs11Custody`` is the same envelope with the data key wrapped by AES-GCM *inside* a
PKCS#11 token under a non-extractable key (format byte ``0x02``): the master key never
leaves the token, so the database alone opens nothing.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from layerseal.errors import IntegrityError, MisuseError, TransportError

_VERSION = b"\x01"
_HEADER = 1 + 8 + 12 + 48 + 12


class KeyCustody(Protocol):
    """Seals and unseals secrets; AAD must be the same for both."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def unseal(self, sealed: bytes, aad: bytes) -> bytes: ...


def record_aad(kind: str, record_id: str, version: int = 0) -> bytes:
    """The AAD binding a sealed blob to its database row."""
    return f"layerseal:{kind}:{record_id}:{version}".encode()


def master_key_id(master_key: bytes) -> bytes:
    """The 8-byte id a sealed blob carries of the master key that sealed it."""
    return hashlib.sha256(b"layerseal master key id\0" + master_key).digest()[:8]


def sealed_key_id(sealed: bytes) -> bytes:
    return bytes(sealed[1:9])


class _EnvelopeCustody:
    """The envelope both custodies write: a fresh AES-256-GCM data key per record, wrapped by
    the backend's master key (:meth:`_wrap`, 48 bytes), the record sealed under the data key."""

    _format: bytes  # the first byte of what this backend seals
    key_id: bytes

    def _wrap(self, data_key: bytes, nonce: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def _unwrap(self, key_id: bytes, wrapped: bytes, nonce: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def _format_error(self, sealed: bytes) -> str:
        raise NotImplementedError

    def _wrong_key(self, key_id: bytes, which: str) -> IntegrityError:
        return IntegrityError(
            f"sealed key: expected master key id {self.key_id.hex()}, seen {key_id.hex()} "
            f"(the broker runs with a different {which})"
        )

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        data_key = AESGCM.generate_key(bit_length=256)
        n1, n2 = os.urandom(12), os.urandom(12)
        wrapped = self._wrap(data_key, n1, aad)
        body = AESGCM(data_key).encrypt(n2, plaintext, aad)
        return self._format + self.key_id + n1 + wrapped + n2 + body

    def unseal(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < _HEADER + 16 or sealed[:1] != self._format:
            raise IntegrityError(self._format_error(sealed))
        n1, wrapped, n2, body = sealed[9:21], sealed[21:69], sealed[69:81], sealed[81:]
        try:
            data_key = self._unwrap(sealed[1:9], wrapped, n1, aad)
            return AESGCM(data_key).decrypt(n2, body, aad)
        except InvalidTag as exc:
            raise IntegrityError(
                "sealed key: expected authentic ciphertext for this record, seen a forgery"
            ) from exc


class MasterKeyCustody(_EnvelopeCustody):
    """Envelope encryption under a 32-byte master key held in memory only."""

    _format = _VERSION

    def __init__(self, master_key: bytes, *, retired: Sequence[bytes] = ()) -> None:
        if len(master_key) != 32 or any(len(k) != 32 for k in retired):
            raise MisuseError(f"master key: expected 32 bytes, seen {len(master_key)}")
        self._master = AESGCM(master_key)
        self.key_id = master_key_id(master_key)
        # keys retired by a rotation: they still open what was sealed under them, never seal
        self._retired = {master_key_id(k): AESGCM(k) for k in retired}

    def __repr__(self) -> str:
        return f"MasterKeyCustody(key_id={self.key_id.hex()})"

    def _wrap(self, data_key: bytes, nonce: bytes, aad: bytes) -> bytes:
        return self._master.encrypt(nonce, data_key, aad)

    def _unwrap(self, key_id: bytes, wrapped: bytes, nonce: bytes, aad: bytes) -> bytes:
        master = self._master if key_id == self.key_id else self._retired.get(key_id)
        if master is None:
            raise self._wrong_key(key_id, "master key")
        return master.decrypt(nonce, wrapped, aad)

    def _format_error(self, sealed: bytes) -> str:
        return f"sealed key: expected format 1 and >= {_HEADER + 16} bytes, seen {len(sealed)} bytes"


_PKCS11_VERSION = b"\x02"


class Pkcs11Custody(_EnvelopeCustody):
    """Envelope encryption whose master key is an AES key held (non-extractable) in a token.

    *key* is a python-pkcs11 ``SecretKey`` on a logged-in session the caller keeps open;
    *key_id* names it in sealed blobs so a wrong token is reported as such.
    """

    _format = _PKCS11_VERSION

    def __init__(self, key: Any, key_id: bytes, description: str = "pkcs11", session: Any = None) -> None:
        if len(key_id) != 8:
            raise MisuseError(f"pkcs11 key id: expected 8 bytes, seen {len(key_id)}")
        self._key = key
        self._session = session
        self.key_id = key_id
        self.description = description
        # one PKCS#11 session is not safe for concurrent operations
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pkcs11Custody({self.description}, key_id={self.key_id.hex()})"

    def close(self) -> None:
        """Log out and close the token session (sealing fails afterwards)."""
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    def _token(self, op: str, data: bytes, nonce: bytes, aad: bytes) -> bytes:
        from pkcs11 import Mechanism, PKCS11Error
        from pkcs11.mechanisms import GCMParams

        params = GCMParams(nonce, aad)
        try:
            with self._lock:
                if op == "wrap":
                    return bytes(self._key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=params))
                return bytes(self._key.decrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=params))
        except PKCS11Error as exc:
            if op == "unwrap":
                raise IntegrityError(
                    "sealed key: expected a data key the token's master key opens for this record, "
                    f"seen one it refuses ({type(exc).__name__})"
                ) from exc
            raise TransportError(
                f"pkcs11 token {self.description}: wrap failed ({type(exc).__name__})"
            ) from exc

    def _wrap(self, data_key: bytes, nonce: bytes, aad: bytes) -> bytes:
        wrapped = self._token("wrap", data_key, nonce, aad)
        if len(wrapped) != 48:
            raise TransportError(
                f"pkcs11 token {self.description}: expected 48 wrapped bytes, seen {len(wrapped)}"
            )
        return wrapped

    def _unwrap(self, key_id: bytes, wrapped: bytes, nonce: bytes, aad: bytes) -> bytes:
        if key_id != self.key_id:
            raise self._wrong_key(key_id, "token key")
        return self._token("unwrap", wrapped, nonce, aad)

    def _format_error(self, sealed: bytes) -> str:
        return (
            f"sealed key: expected format 2 (PKCS#11) and >= {_HEADER + 16} bytes, "
            f"seen format {sealed[:1].hex() or 'none'} and {len(sealed)} bytes"
        )
