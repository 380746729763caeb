"""Resource limits of an unpack: uncompressed bytes per layer and per image, and entries.

A compressed layer is tiny next to what it may expand to (a 1.5 MB zstd layer can hold
a 48 GiB file of zeros), and the digest, HMAC and diff_id checks can only fail at the
end of the stream.  So every decompressed byte is charged here *before* it is handed on
to be written, and the unpack stops with an error naming the limit and the flag that
raises it as soon as a charge would pass a limit.

:class:`ImageBudget` is shared by the layers of one pull, which unpack concurrently, so
its tally is kept under a lock.  A sparse file's holes count as bytes too: they cost no
disk, but the file reads back at its full size.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import NoReturn

from layerseal.errors import BadInputError, expected_seen

DEFAULT_MAX_LAYER_SIZE = 32 << 30
DEFAULT_MAX_IMAGE_SIZE = 64 << 30
DEFAULT_MAX_ENTRIES = 5_000_000

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"32G"``, ``"512MiB"``, ``"1048576"`` -> bytes (binary units); BadInputError otherwise."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise BadInputError(expected_seen("size", "a byte count such as 512M, 32G or 1048576", repr(text)))
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def format_size(n: int) -> str:
    """Bytes as the largest binary unit that divides them exactly (``32 GiB``, ``1000 bytes``)."""
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} bytes"


@dataclass(frozen=True)
class UnpackLimits:
    """Upper bounds of one image unpack; the defaults fit real images with room to spare."""

    max_layer_size: int = DEFAULT_MAX_LAYER_SIZE
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE
    max_entries: int = DEFAULT_MAX_ENTRIES

    def __post_init__(self) -> None:
        for name in ("max_layer_size", "max_image_size", "max_entries"):
            if getattr(self, name) <= 0:
                flag = "--" + name.replace("_", "-")
                raise BadInputError(expected_seen(f"limit {flag}", "a positive number", getattr(self, name)))


class ImageBudget:
    """The running tally of one image's unpack, shared by its layers (thread-safe)."""

    def __init__(self, limits: UnpackLimits | None = None) -> None:
        self.limits = limits or UnpackLimits()
        self._lock = threading.Lock()
        self.bytes = 0
        self.entries = 0

    def layer(self, what: str) -> LayerBudget:
        return LayerBudget(self, what)


class LayerBudget:
    """The tally of one layer; every charge is also charged to its image."""

    def __init__(self, image: ImageBudget, what: str) -> None:
        self.image = image
        self.what = what
        self.bytes = 0
        self.entries = 0

    def charge_bytes(self, n: int) -> None:
        """Account for ``n`` more uncompressed bytes; raise before they pass a limit."""
        limits = self.image.limits
        if self.bytes + n > limits.max_layer_size:
            self._refuse(
                "uncompressed size", "per-layer", limits.max_layer_size, "--max-layer-size", self.bytes + n
            )
        with self.image._lock:
            total = self.image.bytes + n
            if total > limits.max_image_size:
                self._refuse(
                    "uncompressed size", "per-image", limits.max_image_size, "--max-image-size", total
                )
            self.image.bytes = total
        self.bytes += n

    def charge_entry(self) -> None:
        limits = self.image.limits
        with self.image._lock:
            total = self.image.entries + 1
            if total > limits.max_entries:
                raise BadInputError(
                    expected_seen(
                        f"{self.what}: tar entries",
                        f"at most {limits.max_entries} in the image (the entry limit; raise it with "
                        f"--max-entries)",
                        f"entry number {total}",
                    )
                )
            self.image.entries = total
        self.entries += 1

    def _refuse(self, what: str, scope: str, limit: int, flag: str, seen: int) -> NoReturn:
        raise BadInputError(
            expected_seen(
                f"{self.what}: {what}",
                f"at most {format_size(limit)} (the {scope} limit; raise it with {flag})",
                f"{seen} bytes and more",
            )
        )
