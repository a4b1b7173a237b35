"""Shared test fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.paths import PARITY


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not PARITY.is_dir():
        pytest.fail(f"parity data not found at {PARITY}; set THREEDFY_SHARED to the shared/ folder")
    return PARITY
