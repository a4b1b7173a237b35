"""Shared test fixtures."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.paths import PARITY

# Weight caches and downloads made by tests go to a private folder, never the user's data folder.
_SCRATCH = tempfile.mkdtemp(prefix="threedfy-tests-")
os.environ.setdefault("THREEDFY_CACHE", os.path.join(_SCRATCH, "cache"))
os.environ.setdefault("THREEDFY_DOWNLOADS", os.path.join(_SCRATCH, "downloads"))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not PARITY.is_dir():
        pytest.fail(f"parity data not found at {PARITY}; set THREEDFY_SHARED to the shared/ folder")
    return PARITY
