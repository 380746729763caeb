"""Shared test configuration: import path for helpers, captured test data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# a copy of ../shared/testdata (captured protocol messages and TEE evidence) lives in the repo
DATA = TESTS / "data"
sys.path.insert(0, str(TESTS))


@pytest.fixture
def testdata() -> Path:
    return DATA
