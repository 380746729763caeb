"""Issue 15 finding 2: the README's broker quick start and publish/run blocks run as written,
on SQLite and on PostgreSQL, changing only what the README's substitution table names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from brokerproc import free_port, postgres_available, postgres_schema

from layerseal.demo import MESSAGE, build_demo_image
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[3] / "README.md"
BLOCKS = ("broker", "publish-run")
# the left column of the README's substitution table; the test supplies the right one
SUBSTITUTED = ("broker.db", "127.0.0.1:8080", "127.0.0.1:5000", "oci:plain:v1")


def readme_block(text: str, name: str) -> str:
    m = re.search(rf"<!-- readme-test: {re.escape(name)} -->\n```sh\n(.*?)\n```", text, re.S)
    assert m, f"README: no block marked readme-test: {name}"
    return m.group(1)


def test_readme_names_every_substitution() -> None:
    text = README.read_text()
    table = text[text.index("| in the blocks |") :].split("\n\n", 1)[0]
    for key in SUBSTITUTED:
        assert f"| `{key}` |" in table, key
    for name in BLOCKS:
        assert readme_block(text, name)


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield "broker.db"
        return
    with postgres_schema() as url:
        yield f"'{url}'"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_readme_quickstart_runs_as_written(kind: str, tmp_path: Path) -> None:
    if kind == "postgres" and not postgres_available():
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    for tool in ("curl", "jq", "runc", "docker-registry"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if os.geteuid() != 0:
        pytest.skip("layerseal run is exercised as root here")
    work = tmp_path / "quickstart"
    work.mkdir(mode=0o700)
    text = README.read_text()
    registry = RegistryServer(tmp_path / "registry").start()
    try:
        build_demo_image(f"oci:{work / 'plain'}:v1")
        with database(kind, tmp_path) as db:
            values = {
                "broker.db": db,
                "127.0.0.1:8080": f"127.0.0.1:{free_port()}",
                "127.0.0.1:5000": registry.host,
                "oci:plain:v1": "oci:plain:v1",  # built above, in the working directory
            }
            script = "\n".join(readme_block(text, name) for name in BLOCKS)
            for key, value in values.items():
                script = script.replace(key, value)
            # the harness: stop on the first failure, never leave the broker running
            harness = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n"
            env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERSEAL_")}
            env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
            r = subprocess.run(
                ["bash", "-c", harness + script],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
    finally:
        registry.stop()
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert MESSAGE in r.stdout, out[-4000:]
    assert "TOKEN ID" in r.stdout and "acme" in r.stdout  # token list
    assert re.search(r"release\s+ok", r.stdout), out[-4000:]  # audit list shows the release
    assert (work / "broker.admin-token").stat().st_mode & 0o777 == 0o600
    assert (work / "broker.master-key").stat().st_mode & 0o777 == 0o600
    assert not (work / "broker-admin.token").exists()
