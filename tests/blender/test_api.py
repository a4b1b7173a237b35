"""api.reconstruct for scripts: files, images or arrays in; posed objects out, blocking, one undo step."""
from __future__ import annotations

import bpy
import numpy as np
import pytest

from tests.blender.support import (add_camera, camera_intrinsics, image_from_array, iou, picture, rectangle_mask,
                                   silhouette, snapshot, write_picture)

BOXES = {"chair": (4, 6, 30, 40), "table": (34, 10, 62, 30)}


def test_files_in_objects_out_named_after_the_mask_files_and_placed_through_the_given_camera(threedfy, tmp_path):
    camera = add_camera(location=(2.0, -5.0, 1.5), rotation_deg=(85.0, 0.0, 20.0), lens=35.0, shift=(0.05, -0.02))
    image = write_picture(tmp_path / "room.png", picture())
    masks = [write_picture(tmp_path / f"{name}.png", rectangle_mask(*box)) for name, box in BOXES.items()]
    images_before = sorted(i.name for i in bpy.data.images)

    objects = threedfy.api.reconstruct(str(image), [str(m) for m in masks], camera=camera, seed=3,
                                       intrinsics=camera_intrinsics(camera))
    assert [o.name for o in objects] == ["chair", "table"]
    assert objects[0].users_collection[0].name == "3Dfy 001"
    for obj, box in zip(objects, BOXES.values()):
        assert iou(silhouette(obj, camera), rectangle_mask(*box)) >= 0.98
        assert obj["threedfy_source_image"] == str(image) and obj["threedfy_seed"] == 3
    # The picture and mask files were read through temporary images, which are gone again.
    assert sorted(i.name for i in bpy.data.images if i.packed_file is None) == images_before


def test_arrays_and_images_with_names_into_a_named_or_an_existing_collection(threedfy):
    add_camera()
    masks = [rectangle_mask(*box) for box in BOXES.values()]
    objects = threedfy.api.reconstruct(picture(), masks, names=["A", "B"], collection="Run A")
    assert [o.name for o in objects] == ["A", "B"] and objects[0].users_collection[0].name == "Run A"
    props = bpy.data.collections.new("Props")
    bpy.context.scene.collection.children.link(props)
    image = image_from_array("photo", picture())
    (obj,) = threedfy.api.reconstruct(image, [image_from_array("lamp", masks[0])], collection=props)
    assert obj.name == "lamp" and obj.users_collection[0] == props and obj["threedfy_source_image"] == "photo"


def test_a_camera_that_does_not_match_the_engines_view_gets_a_warning_saying_so(threedfy, capsys):
    camera = add_camera(lens=50.0)  # the fake engine assumes f = 1.2 W (43.2 mm); this camera is 50 mm
    threedfy.api.reconstruct(picture(), [rectangle_mask(*BOXES["chair"])], camera=camera)
    assert "engine saw the picture with a 77 px focal length; camera 'Camera' has 89 px" in capsys.readouterr().out
    camera.data.lens = 43.2
    threedfy.api.reconstruct(picture(), [rectangle_mask(*BOXES["chair"])], camera=camera)
    assert "focal length" not in capsys.readouterr().out


def test_without_a_camera_objects_stand_in_front_of_the_world_origin(threedfy):
    (obj,) = threedfy.api.reconstruct(picture(), [rectangle_mask(*BOXES["chair"])])
    assert obj.matrix_world.translation.y > 1.0  # the front view looks along +Y


def test_bad_input_is_refused_before_the_engine_is_asked_and_adds_nothing(threedfy):
    errors = threedfy.submodule("engine.errors")
    before = snapshot()
    with pytest.raises(errors.InputError, match="Mask 'small' is 10x10 but the picture is 64x48"):
        threedfy.api.reconstruct(picture(), [np.ones((10, 10), bool)], names=["small"])
    with pytest.raises(errors.InputError, match="No mask"):
        threedfy.api.reconstruct(picture(), [])
    assert snapshot() == before


def test_a_cancel_from_the_progress_callback_raises_cancelled_and_adds_nothing(threedfy):
    import threading

    errors = threedfy.submodule("engine.errors")
    threedfy.prefs.weights_custom = "fake:slow"
    cancel = threading.Event()
    stages = []

    def progress(stage, fraction):
        stages.append(stage)
        if stage == "Shape and pose":
            cancel.set()

    before = snapshot()
    with pytest.raises(errors.Cancelled):
        threedfy.api.reconstruct(picture(), [rectangle_mask(*BOXES["chair"])], cancel=cancel, progress=progress)
    assert "Shape and pose" in stages and snapshot() == before
