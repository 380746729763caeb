"""``layerseal completion bash`` completes commands, nested actions and options; ``--version``."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import layerseal

CLI = [sys.executable, "-m", "layerseal.cli.main"]


def complete(script: str, *words: str) -> list[str]:
    quoted = " ".join(f"'{w}'" for w in words)
    probe = f'{script}\nCOMP_WORDS=(layerseal {quoted}); COMP_CWORD={len(words)}; _layerseal; printf "%s\\n" "${{COMPREPLY[@]}}"'
    r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    return r.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completion_follows_the_parser() -> None:
    script = subprocess.run([*CLI, "completion", "bash"], capture_output=True, text=True, check=True).stdout
    assert complete(script, "bro") == ["broker"]
    assert complete(script, "broker", "to") == ["token"]
    assert set(complete(script, "broker", "token", "")) >= {"create", "list", "get", "revoke", "--help"}
    assert set(complete(script, "broker", "master-key", "")) >= {"rotate"}
    # options after other options, and only the current action's
    assert complete(script, "-v", "broker", "audit", "list", "--out") == ["--outcome"]
    assert "--expires-in" in complete(script, "broker", "token", "create", "--ex")
    assert complete(script, "run", "--sim-p") == ["--sim-platform"]


def test_version() -> None:
    r = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == f"layerseal {layerseal.__version__}"
