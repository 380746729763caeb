"""Issue 15 finding 2: every environment variable the code reads is in ``layerseal --help``
and in the README (a new one cannot go undocumented)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from layerseal.cli._environment import INTERNAL

ROOT = Path(__file__).resolve().parents[3]


def variables_in_code() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "src" / "layerseal").rglob("*.py"):
        found |= set(re.findall(r"\"(LAYERSEAL_[A-Z0-9_]+)\"", path.read_text()))
    return found - set(INTERNAL)


def test_every_variable_is_documented() -> None:
    names = variables_in_code()
    assert {
        "LAYERSEAL_BROKER_URL",
        "LAYERSEAL_BROKER_TOKEN",
        "LAYERSEAL_KBS_TOKEN",
        "LAYERSEAL_STORE",
    } <= names
    help_text = subprocess.run(
        [sys.executable, "-m", "layerseal.cli.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    readme = (ROOT / "README.md").read_text()
    assert sorted(n for n in names if n not in help_text) == []
    assert sorted(n for n in names if f"`{n}`" not in readme) == []


def test_broker_help_lists_its_variables() -> None:
    def help_of(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "layerseal.cli.main", "broker", *args, "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    serve = help_of("serve")
    for name in ("LAYERSEAL_BROKER_DB", "LAYERSEAL_MASTER_KEY_FILE", "LAYERSEAL_MASTER_KEY", "admin token"):
        assert name in serve
    for args in (("token", "create"), ("audit", "list"), ("policy", "set")):
        text = help_of(*args)
        assert "LAYERSEAL_BROKER_URL" in text and "LAYERSEAL_BROKER_TOKEN" in text, args
