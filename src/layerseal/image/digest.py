"""Content digests (``algorithm:hex``) and an incremental verifier."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from layerseal.errors import BadInputError, IntegrityError

_HEX_LEN = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


@dataclass(frozen=True, order=True)
class Digest:
    """A validated content digest such as ``sha256:e3b0...``."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        want = _HEX_LEN.get(self.algorithm)
        if want is None:
            raise BadInputError(
                f"digest algorithm: expected one of {sorted(_HEX_LEN)}, seen {self.algorithm!r}"
            )
        if len(self.hex) != want or any(c not in "0123456789abcdef" for c in self.hex):
            raise BadInputError(
                f"digest {self.algorithm}: expected {want} lowercase hex digits, seen {self.hex[:80]!r}"
            )

    @classmethod
    def parse(cls, text: str) -> Digest:
        m = _DIGEST_RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise BadInputError(f"digest: expected 'algorithm:hex', seen {str(text)[:80]!r}")
        return cls(m.group(1), m.group(2))

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> DigestVerifier:
        return DigestVerifier(self)


class DigestVerifier:
    """Hashes a stream and checks it against an expected digest (and size) at the end."""

    def __init__(self, expected: Digest, expected_size: int | None = None, what: str = "blob") -> None:
        self.expected = expected
        self.expected_size = expected_size
        self.what = what
        self._h = hashlib.new(expected.algorithm)
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)
        if self.expected_size is not None and self.size > self.expected_size:
            raise IntegrityError(
                f"{self.what} {self.expected}: expected {self.expected_size} bytes, seen more"
            )

    def actual(self) -> Digest:
        return Digest(self.expected.algorithm, self._h.hexdigest())

    def verify(self) -> None:
        if self.expected_size is not None and self.size != self.expected_size:
            raise IntegrityError(
                f"{self.what} {self.expected}: expected {self.expected_size} bytes, seen {self.size}"
            )
        got = self._h.hexdigest()
        if not hmac.compare_digest(got, self.expected.hex):
            raise IntegrityError(
                f"{self.what}: expected digest {self.expected}, seen {self.expected.algorithm}:{got}"
            )
