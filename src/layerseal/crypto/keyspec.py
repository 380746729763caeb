"""``--decryption-key`` values: a key file and where its password comes from (pure).

The forms of skopeo/ocicrypt (``helpers.processPrivateKeyFiles``), plus ``env=``::

    key.pem                 no password
    key.pem:PASSWORD        the password itself (visible in process lists: prefer the others)
    key.pem:pass=PASSWORD   the same, explicitly
    key.pem:file=PATH       read from a file (one trailing newline is ignored)
    key.pem:fd=N            read from an open file descriptor
    key.pem:env=VAR         read from an environment variable (layerseal only)

``pass:``, ``file:``, ``fd:`` and ``env:`` (OpenSSL's spelling) are accepted too.  A
value naming an existing file is that file, even when it contains ``:``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from layerseal.errors import BadInputError

SOURCES = ("pass", "file", "fd", "env")


@dataclass(frozen=True, repr=False)
class PasswordSource:
    """``kind`` is one of ``SOURCES``; ``value`` is the password itself for ``pass``."""

    kind: str
    value: str

    def __repr__(self) -> str:  # never show a literal password
        shown = "<redacted>" if self.kind == "pass" else repr(self.value)
        return f"PasswordSource({self.kind}, {shown})"

    def describe(self) -> str:
        return (
            "a password given inline"
            if self.kind == "pass"
            else f"the password from {self.kind} {self.value}"
        )


@dataclass(frozen=True)
class KeySpec:
    path: str
    password: PasswordSource | None = None


def parse_key_spec(spec: str, is_file: Callable[[str], bool]) -> KeySpec:
    """Split *spec* into the key file and its password source; *is_file* tells existing files."""
    if not spec:
        raise BadInputError("--decryption-key: expected KEYFILE[:PASSWORD-SOURCE], seen an empty value")
    if is_file(spec) or ":" not in spec:
        return KeySpec(spec, None)
    path, _, rest = spec.partition(":")
    for kind in SOURCES:
        for sep in ("=", ":"):
            if rest.startswith(kind + sep):
                value = rest[len(kind) + 1 :]
                if kind == "fd" and not value.isdigit():
                    raise BadInputError(f"--decryption-key {path}:fd=N: expected a file descriptor number")
                if kind in ("file", "env") and not value:
                    raise BadInputError(
                        f"--decryption-key {path}:{kind}=: expected a name, seen an empty one"
                    )
                return KeySpec(path, PasswordSource(kind, value))
    return KeySpec(path, PasswordSource("pass", rest))


def password_bytes(raw: bytes, kind: str) -> list[bytes]:
    """Candidate passwords from what a source held: as read, then without one trailing newline."""
    if kind in ("file", "fd") and raw.endswith(b"\n"):
        stripped = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        return [stripped, raw]
    return [raw]
