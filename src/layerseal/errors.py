"""The error hierarchy: one root, families named by who is at fault.

Every message names the object concerned and gives what was expected beside what was
seen, so a one-line error printed by the CLI is enough to act on.  Secrets never appear.
"""

from __future__ import annotations


class LayersealError(Exception):
    """Root of every error layerseal raises on purpose."""

    #: process exit status the CLI uses for this family
    exit_code = 1


class BadInputError(LayersealError):
    """The input (a file, a manifest, a key, a reference, an argument) is malformed."""

    exit_code = 2


class NotFoundError(BadInputError):
    """Something named by the caller does not exist (a tag, a blob, a key)."""


class IntegrityError(LayersealError):
    """Data failed verification: digest, size, HMAC or signature mismatch."""

    exit_code = 3


class TransportError(LayersealError):
    """A remote peer or the network failed (connection, protocol, unexpected status)."""

    exit_code = 4


class DeniedError(LayersealError):
    """Authentication failed or a policy refused the request."""

    exit_code = 5


class MisuseError(LayersealError):
    """The library was called wrongly (a programming error, not bad data)."""

    exit_code = 70


def expected_seen(what: str, expected: object, seen: object) -> str:
    """Format the standard 'what: expected X, seen Y' message."""
    return f"{what}: expected {expected}, seen {seen}"


class WrongKeyError(BadInputError):
    """None of the keys the caller supplied opens a wrapped layer key."""
