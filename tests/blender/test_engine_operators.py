"""Engine housekeeping: the install plan and its runner, Check Engine, Release GPU, and the panels' drawing."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import bpy
import pytest

from tests.paths import REPO


def test_the_install_plan_makes_a_venv_from_blenders_python_and_picks_torch_for_the_machine(threedfy, tmp_path):
    install = threedfy.submodule("operators.engine_install")
    requirements = REPO / "engine" / "requirements.txt"
    pin = next(line for line in requirements.read_text().splitlines() if line.startswith("torch=="))
    plan = install.install_plan("/blender/python/bin/python3.11", tmp_path / "env", requirements, "575.51.03", "Linux")
    assert plan[0].argv == ("/blender/python/bin/python3.11", "-m", "venv", str(tmp_path / "env"))
    env_python = str(tmp_path / "env" / "bin" / "python")
    assert plan[1].argv[:4] == (env_python, "-m", "pip", "install") and pin in plan[1].argv
    assert plan[1].argv[-2:] == ("--index-url", "https://download.pytorch.org/whl/cu128")
    assert plan[2].argv[-2:] == ("-r", str(requirements)) and plan[3].label == "Checking the engine"
    assert install.torch_build("565.57", "Linux")[1].endswith("/cu126")
    assert install.torch_build(None, "Linux") == ("CPU", "https://download.pytorch.org/whl/cpu")
    assert install.torch_build("470.1", "Windows")[0] == "CPU"  # a driver too old for the CUDA wheels
    windows = install.install_plan("C:/Blender/python.exe", Path("C:/env"), requirements, None, "Windows")
    assert windows[1].argv[0].endswith("Scripts/python.exe") or windows[1].argv[0].endswith("Scripts\\python.exe")


def test_the_install_runner_logs_every_step_and_stops_at_a_failing_one(threedfy, tmp_path):
    install = threedfy.submodule("operators.engine_install")
    log = tmp_path / "install.log"
    steps = [install.Step("First", (sys.executable, "-c", "print('collecting torch')")),
             install.Step("Second", (sys.executable, "-c", "import sys; print('no space left'); sys.exit(3)")),
             install.Step("Never", (sys.executable, "-c", "print('unreachable')"))]
    sequence = install.CommandSequence(steps, log)
    sequence.start()
    sequence.wait(0.05)
    assert sequence.error == "'Second' failed (exit code 3): no space left"
    text = log.read_text()
    assert "collecting torch" in text and "no space left" in text and "unreachable" not in text
    ok = install.CommandSequence(steps[:1], tmp_path / "ok.log")
    ok.start()
    ok.wait(0.05)
    assert ok.error is None and ok.progress == ("Done", 1.0)


def test_installing_needs_online_access_and_says_so(threedfy):
    assert bpy.app.online_access is False  # the bpy module runs offline
    assert not bpy.ops.threedfy.install_engine.poll()


def test_check_engine_reports_the_device_and_release_gpu_frees_it(threedfy, capsys):
    assert bpy.ops.threedfy.check_engine() == {"FINISHED"}
    info = threedfy.session.current_client().info
    assert info["device"] == "cpu" and info["torch"]
    assert bpy.ops.threedfy.release_gpu() == {"FINISHED"}
    threedfy.session.shutdown()
    assert bpy.ops.threedfy.release_gpu() == {"FINISHED"}  # nothing running: nothing to release, no error


class _Layout:
    """A stand-in for UILayout (panels cannot draw in the bpy module) that checks what a draw function asks for:
    every property exists on its data, every operator is registered."""

    def __init__(self, seen: list):
        self.seen = seen

    def __getattr__(self, name):
        def call(*args, **kwargs):
            if name in ("prop", "template_ID"):
                assert hasattr(args[0], args[1]), f"{type(args[0]).__name__} has no property {args[1]!r}"
            elif name == "template_list":
                assert hasattr(args[2], args[3]) and hasattr(args[4], args[5])
            elif name == "operator":
                category, _, operator = args[0].partition(".")
                assert hasattr(getattr(bpy.ops, category), operator), args[0]
            self.seen.append(name)
            return self

        return call


@pytest.mark.parametrize("engine_source", ["INSTALLED", "PYTHON"])
def test_the_sidebar_and_preferences_draw_only_things_that_exist(threedfy, engine_source):
    prefs = threedfy.prefs
    prefs.engine_source = engine_source
    seen = []
    threedfy.submodule("panels.sidebar").draw_sidebar(_Layout(seen), bpy.context)
    assert {"operator", "template_list", "template_ID", "prop"} <= set(seen)
    draw = threedfy.submodule("panels.preferences").THREEDFY_AddonPreferences.draw
    for source in ("HF", "FOLDER", "CUSTOM"):
        prefs.weights_source = source
        names = [p.identifier for p in prefs.bl_rna.properties if p.identifier != "rna_type"]
        draw(SimpleNamespace(**{n: getattr(prefs, n) for n in names}, layout=_Layout(seen)), bpy.context)
