"""Integration tests drive real tools; skip with a clear reason when one is missing."""

from __future__ import annotations

import shutil

import pytest


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run 'make test', which installs the Debian packages")
    return path
