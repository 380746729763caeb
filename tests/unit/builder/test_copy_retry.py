"""Which failures move a layer again: a broken transfer is retried, a failing key broker is not."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from helpers.images import make_image
from layerseal.builder.copy import CopyOptions, copy_image
from layerseal.crypto.keywrap import LayerContext
from layerseal.errors import TransportError
from layerseal.image.descriptor import Descriptor
from layerseal.image.encryption import PrivateOptions
from layerseal.layout.oci import LayoutDestination, LayoutReference, LayoutSource


class FlakyDestination(LayoutDestination):
    """A layout destination whose first *failures* blob writes break off midway."""

    def __init__(self, ref: LayoutReference, failures: int) -> None:
        super().__init__(ref)
        self.failures = failures
        self.puts = 0
        self.media_types: list[str] = []

    def put_blob(
        self,
        chunks: Iterable[bytes],
        media_type: str,
        expected: Descriptor | None = None,
        *,
        verified: bool = False,
    ) -> Descriptor:
        self.puts += 1
        self.media_types.append(media_type)
        if self.failures > 0:
            self.failures -= 1
            for _ in chunks:  # read some of the stream, as an upload would, then fail
                break
            raise TransportError("registry r: blob upload: expected HTTP 202, seen connection reset")
        return super().put_blob(chunks, media_type, expected, verified=verified)


class DownBroker:
    scheme = "provider.attestation-agent"

    def __init__(self) -> None:
        self.calls = 0

    def wrap(self, opts: PrivateOptions, layer: LayerContext) -> bytes:
        self.calls += 1
        raise TransportError("broker https://kbs: create key: expected an HTTP answer, seen ConnectError")


def _source(tmp_path: Path) -> LayoutSource:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",))
    return LayoutSource(LayoutReference.parse(f"oci:{tmp_path}/src:v1"))


def test_broken_transfer_is_retried_and_the_copy_completes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dst = FlakyDestination(LayoutReference.parse(f"oci:{tmp_path}/out:v1"), failures=2)
    report = copy_image(_source(tmp_path), dst)
    assert [r.action for r in report.layers] == ["copied"]
    layer_type = report.layers[0].source.media_type
    assert dst.media_types.count(layer_type) == 3  # two broken attempts, then the good one
    assert caplog.text.count("transferring it again") == 2


def test_transfer_gives_up_after_the_attempts_with_the_original_error(tmp_path: Path) -> None:
    dst = FlakyDestination(LayoutReference.parse(f"oci:{tmp_path}/out:v1"), failures=5)
    with pytest.raises(TransportError, match="connection reset"):
        copy_image(_source(tmp_path), dst, CopyOptions(layer_attempts=2))
    assert dst.puts == 2
    assert not (tmp_path / "out" / "index.json").exists()  # nothing published


def test_failing_broker_is_not_retried_by_uploading_again(tmp_path: Path) -> None:
    dst = FlakyDestination(LayoutReference.parse(f"oci:{tmp_path}/out:v1"), failures=0)
    broker: Any = DownBroker()
    with pytest.raises(TransportError, match="broker https://kbs"):
        copy_image(_source(tmp_path), dst, CopyOptions(wrappers=(broker,)))
    assert broker.calls == 1 and dst.puts == 1
