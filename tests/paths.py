"""Where test data lives. ../shared sits beside the checkout (developers' machines and CI)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("THREEDFY_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"
