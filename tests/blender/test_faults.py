"""Faults through 3Dfy Selection (execute path): each gives a clear report, leaves the scene exactly as it was,
and the next run works. An ERROR report makes `bpy.ops` raise RuntimeError with the report's text."""
from __future__ import annotations

import bpy
import pytest

from tests.blender.support import add_camera, image_from_array, picture, rectangle_mask, snapshot


@pytest.fixture
def reference(threedfy):
    add_camera()
    settings = bpy.context.scene.threedfy
    settings.image = image_from_array("photo", picture())
    item = settings.masks.add()
    item.name, item.image = "Vase", image_from_array("vase mask", rectangle_mask(10, 10, 30, 40))
    return settings


def _fails_cleanly(match: str) -> str:
    """Run 3Dfy Selection, expect an ERROR report matching `match` and no change to the scene; return the
    report's hint (what the sidebar shows under the message)."""
    before = snapshot()
    with pytest.raises(RuntimeError, match=match):
        bpy.ops.threedfy.reconstruct_selection()
    assert snapshot() == before
    state = bpy.context.window_manager.threedfy_run
    assert state.level == "ERROR" and not state.running
    return state.hint


def _next_run_works(threedfy) -> None:
    from tests.blender.conftest import configure_for_fake_engine

    configure_for_fake_engine(threedfy.prefs)
    assert bpy.ops.threedfy.reconstruct_selection() == {"FINISHED"}
    assert [o.name for o in bpy.data.collections["3Dfy 001"].objects] == ["Vase"]


def test_a_worker_killed_mid_run(threedfy, reference):
    threedfy.prefs.weights_custom = "fake:crash"  # the worker SIGKILLs itself in 'geometry', like a driver fault
    hint = _fails_cleanly(r"The engine stopped unexpectedly \(killed by signal SIGKILL\) during 'geometry'")
    assert "Run again: the engine restarts by itself" in hint and "engine.log" in hint
    _next_run_works(threedfy)


def test_running_out_of_memory(threedfy, reference):
    threedfy.prefs.weights_custom = "fake:oom"
    hint = _fails_cleanly("the cuda:0 device ran out of memory in stage 2")
    assert "quality 'fast'" in hint
    assert not threedfy.session.current_client().alive  # retired: the next run gets all the memory back
    _next_run_works(threedfy)


def test_a_cancel(threedfy, reference):
    import threading

    errors = threedfy.submodule("engine.errors")
    threedfy.prefs.weights_custom = "fake:slow"
    cancel = threading.Event()
    before = snapshot()
    with pytest.raises(errors.Cancelled):
        threedfy.api.reconstruct(picture(), [rectangle_mask(10, 10, 30, 40)], cancel=cancel,
                                 progress=lambda stage, fraction: cancel.set())
    assert snapshot() == before
    _next_run_works(threedfy)


def test_missing_weights(threedfy, reference, tmp_path):
    threedfy.prefs.weights_source = "FOLDER"
    threedfy.prefs.weights_folder = str(tmp_path / "sam-3d-objects")
    hint = _fails_cleanly(f"The weights folder '{tmp_path / 'sam-3d-objects'}' does not exist")
    assert "Choose the folder of the downloaded release" in hint
    threedfy.prefs.weights_source = "CUSTOM"
    threedfy.prefs.weights_custom = "fake:missing"  # what the engine says when a folder lacks its files
    hint = _fails_cleanly("has no pipeline.yaml")
    assert "choose the folder of the downloaded release" in hint
    _next_run_works(threedfy)


def test_no_engine_installed(threedfy, reference):
    threedfy.prefs.engine_source = "INSTALLED"  # nothing was installed in this session's user folder
    hint = _fails_cleanly("The 3Dfy engine is not installed")
    assert "Install Engine in Preferences > Add-ons > 3Dfy" in hint
    threedfy.prefs.engine_source = "PYTHON"
    threedfy.prefs.python_path = "/nonexistent/engine-env/bin/python"
    _fails_cleanly("The engine's Python '/nonexistent/engine-env/bin/python' does not exist")
    _next_run_works(threedfy)


def test_an_unexpected_engine_failure(threedfy, reference):
    threedfy.prefs.weights_custom = "fake:bug"
    hint = _fails_cleanly("The engine failed: ValueError: index 7 is out of bounds")
    assert "engine log" in hint
    _next_run_works(threedfy)
