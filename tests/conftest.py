"""Shared test configuration: import path for helpers, captured test data."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# a copy of ../shared/testdata (captured protocol messages and TEE evidence) lives in the repo
DATA = TESTS / "data"
sys.path.insert(0, str(TESTS))


@pytest.fixture
def testdata() -> Path:
    return DATA


@pytest.fixture(autouse=True, scope="session")
def private_snapshot_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Pulls that name no ``--snapshots`` cache in a directory of this run, never in /run/layerseal.

    Every command started by a test inherits it, so no test reuses a snapshot another
    run (or another checkout's tests) left in the machine's default cache.
    """
    old = os.environ.get("LAYERSEAL_SNAPSHOTS")
    os.environ["LAYERSEAL_SNAPSHOTS"] = str(tmp_path_factory.mktemp("snapshots"))
    yield
    if old is None:
        os.environ.pop("LAYERSEAL_SNAPSHOTS", None)
    else:
        os.environ["LAYERSEAL_SNAPSHOTS"] = old
