"""Reading the small local files users and the environment name (configs, tokens,
certificates), with the one-line ``<what>: expected ..., seen <reason>`` error."""

from __future__ import annotations

import os
from pathlib import Path

from layerseal.errors import BadInputError, LayersealError


def read_bytes(
    path: str | os.PathLike[str],
    what: str,
    *,
    expected: str = "a readable file",
    error: type[LayersealError] = BadInputError,
) -> bytes:
    """The bytes of *path*; an unreadable file raises *error* naming *what* and the OS's reason."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{what}: expected {expected}, seen {exc.strerror}") from exc
