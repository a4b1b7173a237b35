"""`scripts/check_bricks.py` (the GPU check of the brick-wise convolutions) runs end to end as a CPU smoke run, and the
two paths it compares agree in float32."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from engine.sparse import conv

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_bricks.py"


def test_check_bricks_smoke_run_on_the_cpu(capsys):
    spec = importlib.util.spec_from_file_location("check_bricks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_bricks", module)
    spec.loader.exec_module(module)
    before = conv.BRICK_DEVICES
    assert module.main(["--preset", "tiny", "--device", "cpu", "--voxels", "200", "--repeats", "1"]) == 0
    assert conv.BRICK_DEVICES == before  # restored
    out = capsys.readouterr().out
    assert "float32   bricks" in out and "bfloat16  gathers" in out
    f32 = re.search(r"bricks vs gathers, float32: +max ([0-9.e+-]+)", out)
    assert f32 is not None and float(f32.group(1)) < 1e-5
