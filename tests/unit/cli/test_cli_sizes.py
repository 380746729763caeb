"""``--dest-chunk-size`` and the option checks behind it: clear errors, nothing sent."""

from __future__ import annotations

import pytest

from layerseal.builder.copy import CopyOptions
from layerseal.cli.common import parse_size
from layerseal.cli.main import main
from layerseal.errors import BadInputError, MisuseError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1 << 20),
        ("512K", 512 << 10),
        ("16M", 16 << 20),
        ("1G", 1 << 30),
        ("16MiB", 16 << 20),
        ("5mb", 5 << 20),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text, "--dest-chunk-size") == expected


@pytest.mark.parametrize("text", ["", "0", "K", "-1", "1.5M", "12T", "abc"])
def test_bad_sizes_name_the_flag_and_the_value(text: str) -> None:
    with pytest.raises(BadInputError, match=f"--dest-chunk-size {text!r}: expected a positive size"):
        parse_size(text, "--dest-chunk-size")


def test_cli_refuses_a_bad_chunk_size_before_any_transfer(capsys: pytest.CaptureFixture[str]) -> None:
    # the destination names a port nobody listens on: a request would fail differently
    status = main(["copy", "--dest-chunk-size", "0", "oci:/nonexistent/x:v1", "docker://127.0.0.1:9/a/b:v1"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("layerseal: error: --dest-chunk-size '0'") and err.count("\n") == 1


@pytest.mark.parametrize("field", ["workers", "layer_attempts"])
def test_copy_options_refuse_non_positive_counts(field: str) -> None:
    with pytest.raises(MisuseError, match=f"CopyOptions.{field}: expected a positive integer, seen 0"):
        CopyOptions(**{field: 0})  # type: ignore[arg-type]
