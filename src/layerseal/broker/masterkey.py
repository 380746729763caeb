"""Loading (or creating) the broker's master key: a file with mode 0600 or an env variable.

The master key encrypts every key the broker holds; it is never written to the database.
A group- or world-readable key file is refused rather than silently trusted.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from layerseal.errors import BadInputError, DeniedError, NotFoundError

ENV_VAR = "LAYERSEAL_MASTER_KEY"
KEY_SIZE = 32


def _decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInputError(f"{what}: expected base64 of {KEY_SIZE} bytes, seen invalid base64") from exc
    if len(raw) != KEY_SIZE:
        raise BadInputError(f"{what}: expected {KEY_SIZE} bytes, seen {len(raw)}")
    return raw


def create_master_key_file(path: Path) -> bytes:
    """Write a fresh random master key (base64) to *path* with mode 0600; fail if it exists."""
    key = secrets.token_bytes(KEY_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return key


def read_master_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise NotFoundError(f"master key file {path}: expected to exist, seen none") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DeniedError(
            f"master key file {path}: expected mode 0600 (owner only), seen {oct(mode & 0o777)}; "
            "fix with chmod 600"
        )
    return _decode(path.read_text(), f"master key file {path}")


def load_master_key(
    path: Path | None, *, create: bool = False, environ: Mapping[str, str] | None = None
) -> bytes:
    """The master key from ``$LAYERSEAL_MASTER_KEY`` if set, else from *path* (created if asked)."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_VAR)
    if text:
        return _decode(text, f"environment variable {ENV_VAR}")
    if path is None:
        raise BadInputError(f"master key: expected ${ENV_VAR} or a master key file, seen neither")
    if create and not path.exists():
        return create_master_key_file(path)
    return read_master_key_file(path)
