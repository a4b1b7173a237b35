"""The folder batch (api.reconstruct_folder and the 3Dfy Folder operator): a log per picture, resumable."""
from __future__ import annotations

import json

import bpy
import numpy as np

from tests.blender.support import add_camera, picture, rectangle_mask, write_picture


def _folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_picture(folder / "desk.png", picture())
    write_picture(folder / "desk_mask_lamp.png", rectangle_mask(5, 5, 20, 30))
    write_picture(folder / "desk_mask_mug.png", rectangle_mask(30, 20, 50, 40))
    write_picture(folder / "shelf.png", picture())
    write_picture(folder / "shelf_mask.png", rectangle_mask(10, 10, 40, 40))
    write_picture(folder / "wall.png", picture())  # no masks
    return folder


def _log(folder, item):
    return json.loads((folder / "3dfy_log" / f"{item}.json").read_text())


def test_every_picture_with_masks_becomes_a_collection_and_gets_a_log(threedfy, tmp_path):
    add_camera()
    folder = _folder(tmp_path)
    counts = threedfy.api.reconstruct_folder(folder, seed=4)
    assert counts == {"ok": 2, "error": 0, "skipped": 1, "done before": 0}
    assert sorted(o.name for o in bpy.data.collections["3Dfy desk"].objects) == ["lamp", "mug"]
    assert [o.name for o in bpy.data.collections["3Dfy shelf"].objects] == ["shelf 1"]
    desk = _log(folder, "desk")
    assert desk["status"] == "ok" and desk["collection"] == "3Dfy desk" and desk["seed"] == 4
    assert sorted(desk["objects"]) == ["lamp", "mug"] and desk["seconds"] >= 0
    assert _log(folder, "wall")["status"] == "skipped" and "wall_mask" in _log(folder, "wall")["message"]


def test_a_second_batch_resumes_without_redoing_finished_pictures(threedfy, tmp_path):
    add_camera()
    folder = _folder(tmp_path)
    threedfy.api.reconstruct_folder(folder)
    # Interrupted runs: "shelf" was running when Blender died (no collection), "desk" finished and the file was
    # saved but its log was not yet written.
    (folder / "3dfy_log" / "shelf.json").write_text(json.dumps({"status": "running"}))
    bpy.data.collections.remove(bpy.data.collections["3Dfy shelf"])
    (folder / "3dfy_log" / "desk.json").write_text(json.dumps({"status": "running"}))
    collections = len(bpy.data.collections)

    counts = threedfy.api.reconstruct_folder(folder)
    assert counts == {"ok": 1, "error": 0, "skipped": 1, "done before": 1}
    assert len(bpy.data.collections) == collections + 1 and "3Dfy shelf" in bpy.data.collections
    assert _log(folder, "shelf")["status"] == "ok"
    assert _log(folder, "desk")["status"] == "ok" and _log(folder, "desk")["recovered"] is True
    assert threedfy.api.reconstruct_folder(folder)["done before"] == 2


def test_a_bad_picture_is_logged_with_its_reason_and_the_batch_goes_on(threedfy, tmp_path):
    folder = _folder(tmp_path)
    write_picture(folder / "desk_mask_small.png", np.ones((8, 8), bool))  # not the picture's size
    counts = threedfy.api.reconstruct_folder(folder)
    assert counts["error"] == 1 and counts["ok"] == 1
    error = _log(folder, "desk")["error"]
    assert error["kind"] == "bad_input" and "Mask 'small' is 8x8 but the picture is 64x48" in error["message"]
    assert "3Dfy desk" not in bpy.data.collections


def test_the_operator_runs_the_batch_and_saves_after_each_picture(threedfy, tmp_path):
    folder = _folder(tmp_path)
    path = tmp_path / "batch.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    assert bpy.ops.threedfy.reconstruct_folder(directory=str(folder), quality="fast", save=True) == {"FINISHED"}
    bpy.ops.wm.open_mainfile(filepath=str(path))
    assert {"3Dfy desk", "3Dfy shelf"} <= {c.name for c in bpy.data.collections}


def test_the_command_line_script_runs_the_batch_in_the_running_blender(threedfy, tmp_path):
    import runpy

    from tests.paths import REPO

    folder = _folder(tmp_path)
    script = runpy.run_path(str(REPO / "scripts" / "batch_folder.py"), run_name="reconstruct_folder")
    assert script["main"]([str(folder), "--quality", "fast", "--seed", "2"]) == 0
    assert _log(folder, "shelf")["seed"] == 2 and "3Dfy shelf" in bpy.data.collections
