"""Integration tests drive real tools; skip with a clear reason when one is missing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.registry_server import RegistryServer


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run 'make test', which installs the Debian packages")
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A real docker-registry on a free 127.0.0.1 port, plain HTTP, for this test only."""
    with RegistryServer(tmp_path / "registry") as reg:
        yield reg
