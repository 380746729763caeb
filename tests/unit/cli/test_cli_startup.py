"""Lazy command loading: ``--version``/``--help`` import no command module, and the
table that lists commands without importing them matches what the modules register."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import layerseal
from layerseal.cli import main as cli_main


def _real_commands() -> dict[str, str]:
    parser = cli_main.build_parser(None, lazy=False)
    sub = next(a for a in parser._actions if a.dest == "command")
    return {c.dest: str(c.help) for c in sub._choices_actions}


def test_the_command_table_matches_what_the_modules_register() -> None:
    table = {name: help_text for name, (_, help_text) in cli_main._COMMANDS.items()}
    assert table == _real_commands()


def test_each_command_is_registered_by_the_module_the_table_names() -> None:
    for name, (module, _) in cli_main._COMMANDS.items():
        parser = cli_main.build_parser([name])
        sub = next(a for a in parser._actions if a.dest == "command")
        assert sub.choices[name].get_default("func") is not cli_main._placeholder, (name, module)


def _imported_after(args: list[str]) -> set[str]:
    code = (
        "import sys, contextlib, io\n"
        "from layerseal.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({args!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('layerseal')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["-v", "--version"]])
def test_version_and_help_import_no_command_module(args: list[str]) -> None:
    loaded = _imported_after(args)
    commands = {f"layerseal.cli.{m}" for m, _ in cli_main._COMMANDS.values()}
    assert not loaded & commands
    assert not any(
        m.startswith(("layerseal.engine", "layerseal.registry", "layerseal.broker")) for m in loaded
    )


def test_a_command_imports_only_its_own_module() -> None:
    loaded = _imported_after(["copy", "--help"])
    assert "layerseal.cli.copy" in loaded
    assert not {"layerseal.cli.engine", "layerseal.cli.broker", "layerseal.cli.tee"} & loaded


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["--version"]) == 0
    assert capsys.readouterr().out == f"layerseal {layerseal.__version__}\n"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in cli_main._COMMANDS:
        assert f"    {name} " in out or f"    {name}\n" in out


def test_an_unknown_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main.main(["nosuchcommand"])
    assert info.value.code == 2
    assert "invalid choice: 'nosuchcommand'" in capsys.readouterr().err


# what a parser must not load: each costs tens of milliseconds of start-up (issue 20)
HEAVY = (
    "alembic",
    "cryptography",
    "grpc",
    "httpx",
    "jinja2",
    "joserfc",
    "rich",
    "sqlalchemy",
    "starlette",
    "tarfile",
    "uvicorn",
)
MISSING_LAYOUT = "oci:/nonexistent/layerseal-test:v1"


def _imported_by_cli(args: list[str], cwd: Path, statuses: tuple[int, ...] = (0, 1, 2)) -> set[str]:
    """Every module the real entry point imports for *args*, as ``-X importtime`` names them."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "layerseal.cli.main", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        check=False,
    )
    assert proc.returncode in statuses, proc.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["inspect", MISSING_LAYOUT],
        *([name, "--help"] for name in sorted(cli_main._COMMANDS)),
        ["keys", "rotate", "--help"],
        ["broker", "serve", "--help"],
        ["tee", "evidence", "--help"],
    ],
    ids=" ".join,
)
def test_help_and_first_errors_import_no_heavy_package(args: list[str], tmp_path: Path) -> None:
    loaded = _imported_by_cli(args, tmp_path)
    assert "layerseal.cli.main" in loaded or "layerseal.cli" in loaded  # the listing was read
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert heavy == []


def test_the_inspect_of_a_missing_layout_fails_as_before(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "layerseal.cli.main", "inspect", MISSING_LAYOUT],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "layerseal: error: OCI layout /nonexistent/layerseal-test: expected an 'oci-layout' file, seen none\n"
    )


def test_the_values_shown_in_help_equal_their_owners() -> None:
    from layerseal.attest import attesters, binding
    from layerseal.cli import _constants
    from layerseal.engine import limits

    assert _constants.TEE_CHOICES == attesters.TEE_CHOICES
    assert _constants.HASH_ALGORITHMS == binding.HASH_ALGORITHMS
    assert _constants.DEFAULT_MAX_LAYER_SIZE == limits.DEFAULT_MAX_LAYER_SIZE
    assert _constants.DEFAULT_MAX_IMAGE_SIZE == limits.DEFAULT_MAX_IMAGE_SIZE
    assert _constants.DEFAULT_MAX_ENTRIES == limits.DEFAULT_MAX_ENTRIES


# what a command that fails on a missing image must not load: the pull, unpack and copy
# pipelines, the stores it would fill, the crypto and the image model it never reads
NOT_BEFORE_THE_IMAGE = (
    "layerseal.builder.copy",
    "layerseal.builder.inspect",
    "layerseal.builder.layeradd",
    "layerseal.crypto.keywrap",
    "layerseal.engine.bundle",
    "layerseal.engine.pull",
    "layerseal.engine.runtime",
    "layerseal.engine.unpack",
    "layerseal.image.config",
    "layerseal.image.manifest",
    "layerseal.streams",
    "concurrent.futures",
    "ctypes",  # the allocator is tuned once the image opened
    "tempfile",
)


def _missing_image_commands(tmp_path: Path) -> dict[str, list[str]]:
    cache = ["--store", str(tmp_path / "store"), "--snapshots", str(tmp_path / "snapshots")]
    (tmp_path / "file").write_bytes(b"x")
    dst = f"oci:{tmp_path / 'dst'}:v1"
    return {
        "inspect": ["inspect", MISSING_LAYOUT],
        "pull": ["pull", MISSING_LAYOUT, "--rootfs", str(tmp_path / "out" / "rootfs"), *cache],
        "pull --bundle": ["pull", MISSING_LAYOUT, "--bundle", str(tmp_path / "bundle"), *cache],
        "run": ["run", *cache, MISSING_LAYOUT],  # what follows SRC is the container's command
        "copy": ["copy", MISSING_LAYOUT, dst],
        "layer add": ["layer", "add", MISSING_LAYOUT, str(tmp_path / "file"), dst],
        "keys rotate": ["keys", "rotate", MISSING_LAYOUT, dst],
    }


@pytest.mark.parametrize(
    "command", ["inspect", "pull", "pull --bundle", "run", "copy", "layer add", "keys rotate"]
)
def test_a_missing_image_fails_before_the_pipeline_loads(command: str, tmp_path: Path) -> None:
    args = _missing_image_commands(tmp_path)[command]
    loaded = _imported_by_cli(args, tmp_path, (125,) if command == "run" else (2,))
    assert "layerseal.layout.oci" in loaded  # the source was opened
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []
    assert sorted(m for m in loaded if m in NOT_BEFORE_THE_IMAGE) == []


@pytest.mark.parametrize("command", ["pull", "pull --bundle", "run", "copy", "layer add", "keys rotate"])
def test_a_missing_image_fails_as_before_and_leaves_nothing(command: str, tmp_path: Path) -> None:
    args = _missing_image_commands(tmp_path)[command]
    proc = subprocess.run(
        [sys.executable, "-m", "layerseal.cli.main", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == (125 if command == "run" else 2)
    assert proc.stderr == (
        "layerseal: error: OCI layout /nonexistent/layerseal-test: expected an 'oci-layout' file, seen none\n"
    )
    # the source is opened before the blob store and the cache are made, and the output of
    # a failed pull is removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("command", ["pull", "copy"])
def test_past_the_opened_source_the_stores_are_made_and_the_allocator_tuned(
    command: str, tmp_path: Path
) -> None:
    layout = tmp_path / "image"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')  # but no index.json
    cache = ["--store", str(tmp_path / "store"), "--snapshots", str(tmp_path / "snapshots")]
    args = {
        "pull": ["pull", f"oci:{layout}", "--bundle", str(tmp_path / "b"), *cache],
        "copy": ["copy", f"oci:{layout}", f"oci:{tmp_path / 'dst'}:v1"],
    }[command]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "layerseal.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.endswith(f"layerseal: error: OCI layout {layout}: index.json is missing\n")
    assert "| layerseal.cli._allocator\n" in proc.stderr  # tuned before the data moves
    if command == "pull":
        assert (tmp_path / "store").is_dir() and (tmp_path / "snapshots").is_dir()
        assert not (tmp_path / "b").exists()


def test_an_empty_keyprovider_request_fails_before_the_broker_client_loads(tmp_path: Path) -> None:
    loaded = _imported_by_cli(["keyprovider", "--kbs", "http://127.0.0.1:9"], tmp_path)
    assert "layerseal.keyprovider.protocol" in loaded  # the request was read
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []
    unwanted = {
        "http.client",
        "ssl",
        "socket",
        "hashlib",
        "ctypes",
        "layerseal.keyprovider.brokerhttp",
        "layerseal.kbs.rcarclient",
        "layerseal.attest.attesters",
    }
    assert sorted(unwanted & loaded) == []


def test_an_empty_keyprovider_request_fails_as_before(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "layerseal.cli.main", "keyprovider"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        "layerseal: error: keyprovider request (0 bytes): expected one JSON object, seen invalid JSON "
        "(Expecting value: line 1 column 1 (char 0))\n"
    )


def test_keys_without_a_broker_fails_before_the_http_client_loads(tmp_path: Path) -> None:
    loaded = _imported_by_cli(["keys", "list"], tmp_path)
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []
    assert "layerseal.kbs.client" not in loaded
