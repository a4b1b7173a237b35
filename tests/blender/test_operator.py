"""3Dfy Selection through the real worker process (fake pipeline): the execute path, and the runner that the
modal path drives with its timer (timers never fire in the bpy module, so the test plays the timer)."""
from __future__ import annotations

import bpy
import pytest

from tests.blender.support import add_camera, image_from_array, iou, picture, rectangle_mask, silhouette, snapshot

MASKS = {"Lamp": (6, 8, 26, 30), "Mug": (36, 20, 58, 44)}  # (u0, v0, u1, v1) pixel rectangles


def _reference(masks=MASKS, select=None):
    settings = bpy.context.scene.threedfy
    settings.image = image_from_array("desk.png", picture())
    for name, box in masks.items():
        item = settings.masks.add()
        item.name = name
        item.image = image_from_array(f"{name} mask", rectangle_mask(*box))
        item.select = select is None or name in select
    return settings


def test_3dfy_selection_adds_one_collection_of_posed_textured_objects_that_land_on_their_masks(threedfy):
    camera = add_camera()  # intrinsics equal to the fake pipeline's default: its objects reproject exactly
    settings = _reference()
    settings.seed = 11
    assert bpy.ops.threedfy.reconstruct_selection() == {"FINISHED"}

    collection = bpy.data.collections["3Dfy 001"]
    assert sorted(o.name for o in collection.objects) == ["Lamp", "Mug"]
    for name, box in MASKS.items():
        obj = bpy.data.objects[name]
        assert iou(silhouette(obj, camera), rectangle_mask(*box)) >= 0.98
        assert obj["threedfy_seed"] == 11 and obj["threedfy_quality"] == "fast"  # the preferences' default quality
        assert obj["threedfy_source_image"] == "desk.png" and obj["threedfy_weights"] == "fake-weights"
        assert len(obj["threedfy_mask_hash"]) == 16
        image = obj.active_material.node_tree.nodes["Image Texture"].image
        assert image.packed_file is not None
    state = bpy.context.window_manager.threedfy_run
    assert state.level == "INFO" and state.message == "Added 2 objects to '3Dfy 001'" and not state.running


def test_only_selected_masks_run_and_a_random_seed_is_drawn_stored_and_shown(threedfy):
    add_camera()
    settings = _reference(select={"Mug"})
    settings.randomize_seed = True
    settings.seed = 0
    assert bpy.ops.threedfy.reconstruct_selection() == {"FINISHED"}
    (obj,) = bpy.data.collections["3Dfy 001"].objects
    assert obj.name == "Mug" and obj["threedfy_seed"] == settings.seed != 0


def test_the_button_explains_why_it_is_disabled(threedfy):
    assert not bpy.ops.threedfy.reconstruct_selection.poll()
    settings = _reference(select=set())
    assert not bpy.ops.threedfy.reconstruct_selection.poll()
    settings.masks[0].select = True
    assert bpy.ops.threedfy.reconstruct_selection.poll()


def test_the_modal_path_runs_the_same_job_and_cancel_leaves_the_scene_as_it_was(threedfy):
    runner = threedfy.submodule("operators.runner")
    errors = threedfy.submodule("engine.errors")
    camera = add_camera()
    settings = _reference()
    inputs = threedfy.submodule("operators.reconstruct")._selection_inputs(bpy.context)

    threedfy.prefs.weights_custom = "fake:slow"
    before = snapshot()
    run = runner.ReconstructionRun(inputs, runner.RunOptions(quality="fast"))
    run.start()
    assert runner.active_run() is run and not bpy.ops.threedfy.reconstruct_selection.poll()
    while run.progress[0] != "Shape and pose":  # what the timer does every 0.1 s
        assert not run.step(0.05)
    assert bpy.ops.threedfy.cancel() == {"FINISHED"}  # the Cancel button (ESC does the same)
    while not run.step(0.05):
        pass
    with pytest.raises(errors.Cancelled):
        run.finish(bpy.context.scene)
    assert snapshot() == before and runner.active_run() is None

    threedfy.prefs.weights_custom = "fake"
    run = runner.ReconstructionRun(inputs, runner.RunOptions(quality="fast"))
    run.start()
    while not run.step(0.05):
        pass
    collection, objects = run.finish(bpy.context.scene)
    assert [o.name for o in objects] == ["Lamp", "Mug"] and settings.masks[0].name == "Lamp"
    assert iou(silhouette(objects[1], camera), rectangle_mask(*MASKS["Mug"])) >= 0.98


def test_masks_are_added_from_files_or_loaded_images_and_removed_from_the_list(threedfy, tmp_path):
    from tests.blender.support import write_picture

    settings = bpy.context.scene.threedfy
    path = write_picture(tmp_path / "cup.png", rectangle_mask(1, 1, 9, 9))
    assert bpy.ops.threedfy.add_masks(filepath=str(path)) == {"FINISHED"}
    image_from_array("plate mask", rectangle_mask(2, 2, 8, 8))
    assert bpy.ops.threedfy.add_masks(image="plate mask") == {"FINISHED"}
    assert [(m.name, m.select) for m in settings.masks] == [("cup", True), ("plate mask", True)]
    assert settings.masks[0].image.colorspace_settings.name == "Non-Color" and settings.active_mask == 1
    with pytest.raises(RuntimeError, match="There is no image named 'nope'"):
        bpy.ops.threedfy.add_masks(image="nope")
    assert bpy.ops.threedfy.remove_mask() == {"FINISHED"}
    assert [m.name for m in settings.masks] == ["cup"] and "plate mask" in bpy.data.images
