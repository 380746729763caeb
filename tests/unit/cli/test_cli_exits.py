"""Exit statuses for failures that are not layerseal's own errors."""

from __future__ import annotations

import errno

from layerseal.cli._exits import describe_os_error, exit_code_of, os_error_status
from layerseal.errors import LayersealError, TransportError


def test_os_errors() -> None:
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "policy.json")
    assert os_error_status(missing) == 2
    assert (
        describe_os_error(missing)
        == "policy.json: expected a usable file or directory, seen No such file or directory"
    )
    full = OSError(errno.ENOSPC, "No space left on device", "/dst/blobs/x")
    assert os_error_status(full) == 2 and "no space left on the device" in describe_os_error(full)
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert os_error_status(refused) == 4


def test_a_generic_error_caused_by_a_full_disk_is_bad_input() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise LayersealError("rootfs: building: expected success") from exc
    except LayersealError as outer:
        assert exit_code_of(outer) == 2
    assert exit_code_of(LayersealError("other")) == 1
    assert exit_code_of(TransportError("x")) == 4
