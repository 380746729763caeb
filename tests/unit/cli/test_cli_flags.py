"""CLI flags with values: sizes, job counts, skopeo spellings, trust directories; clear errors before any work."""

from __future__ import annotations

from pathlib import Path

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


def test_inspect_takes_skopeo_flag_spellings() -> None:
    from layerseal.cli.main import build_parser

    argv = ["inspect", "--tls-verify=false", "--creds", "u:p", "--cert-dir", "/c", "docker://h/r:t"]
    args = build_parser(argv).parse_args(argv)
    assert (args.src_tls_verify, args.src_creds, args.src_cert_dir) == ("false", "u:p", "/c")
    default = build_parser(["inspect"]).parse_args(["inspect", "docker://h/r:t"])
    assert default.src_tls_verify == "true"


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5"])
def test_jobs_must_be_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["copy", "--jobs", value, "oci:/a:v1", "oci:/b:v1"])
    assert info.value.code == 2
    assert f"expected a positive whole number, seen {value!r}" in capsys.readouterr().err


def test_chunk_size_above_the_cap_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(
        BadInputError, match=r"--dest-chunk-size '2G': expected at most 1073741824 bytes, seen 2147483648"
    ):
        parse_size("2G", "--dest-chunk-size", most=1 << 30)
    assert parse_size("1G", "--dest-chunk-size", most=1 << 30) == 1 << 30
    status = main(["copy", "--dest-chunk-size", "5G", "oci:/nonexistent/x:v1", "docker://127.0.0.1:9/a/b:v1"])
    assert status == 2 and "expected at most 1073741824 bytes" in capsys.readouterr().err


def test_broker_refuses_a_missing_crl_directory_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "broker.db"
    status = main(
        ["broker", "serve", "--db", str(db), "--listen", "127.0.0.1:0", "--snp-crl", str(tmp_path / "nope")]
    )
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        f"layerseal: error: snp CRL directory {tmp_path / 'nope'}: expected a directory, seen none"
    )


@pytest.mark.parametrize(
    "argv",
    [
        [
            "layer",
            "add",
            "--dest-chunk-size",
            "0",
            "oci:/nonexistent/x:v1",
            "/etc/hostname",
            "docker://127.0.0.1:9/a/b:v1",
        ],
        ["keys", "rotate", "--dest-chunk-size", "0", "oci:/nonexistent/x:v1", "docker://127.0.0.1:9/a/b:v1"],
    ],
    ids=["layer-add", "keys-rotate"],
)
def test_every_command_checks_registry_flags_before_opening(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # the source does not exist: a command that opened it first would report that instead
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("layerseal: error: --dest-chunk-size '0'")
