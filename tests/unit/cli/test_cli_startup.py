"""Lazy command loading: ``--version``/``--help`` import no command module, and the
table that lists commands without importing them matches what the modules register."""

from __future__ import annotations

import subprocess
import sys

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
