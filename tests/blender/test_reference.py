"""The reference and its masks inside Blender, through the operators (execute path; the fake pipeline for
reconstructions, the real worker with a random tiny SAM for clicks): camera capture, a photo with a camera made to
match, a camera's background image, painted and Blender masks; and bad input, each refused with a clear message
and nothing changed."""
from __future__ import annotations

import os

import bpy
import numpy as np
import pytest

from tests.blender.support import (
    HEIGHT,
    WIDTH,
    add_camera,
    camera_intrinsics,
    image_from_array,
    iou,
    picture,
    rectangle_mask,
    silhouette,
    snapshot,
    write_picture,
)

BOX = (8, 10, 30, 36)  # (u0, v0, u1, v1) the painted rectangle


def _cube_scene() -> bpy.types.Object:
    camera = add_camera()  # at (0, -6, 1) looking along +Y; 64 x 48, f = 1.2 W
    mesh = bpy.data.meshes.new("Cube")
    corners = [(x, y, z) for x in (-0.7, 0.7) for y in (-0.7, 0.7) for z in (0.3, 1.7)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    mesh.from_pydata(corners, [], faces)
    cube = bpy.data.objects.new("Cube", mesh)
    bpy.context.scene.collection.objects.link(cube)
    bpy.context.view_layer.update()
    return camera


def _paint(image: bpy.types.Image, mask: np.ndarray) -> None:
    """What painting white strokes does to a mask image: its pixels change in memory (the image is dirty)."""
    rgba = np.ones((*mask.shape, 4), np.float32)
    rgba[:, :, :3] = mask[:, :, None]
    image.pixels.foreach_set(np.flipud(rgba).reshape(-1))


def _record_jobs(threedfy, monkeypatch) -> list[dict]:
    """Every job 3Dfy writes, as {pointmap, intrinsics} (the arrays the engine is given)."""
    jobs = threedfy.submodule("engine.jobs")
    recorded, write_job = [], jobs.write_job

    def recording(folder, settings, image, masks, pointmap=None, intrinsics=None):
        recorded.append({"pointmap": pointmap, "intrinsics": intrinsics})
        return write_job(folder, settings, image, masks, pointmap=pointmap, intrinsics=intrinsics)

    monkeypatch.setattr(jobs, "write_job", recording)
    return recorded


def test_a_capture_a_clicked_mask_and_a_painted_mask_give_two_posed_objects_in_one_collection(threedfy, monkeypatch):
    reference = threedfy.submodule("scene.reference")
    camera = _cube_scene()
    recorded = _record_jobs(threedfy, monkeypatch)
    assert bpy.ops.threedfy.capture_camera(engine="CYCLES", samples=1) == {"FINISHED"}
    settings = bpy.context.scene.threedfy
    captured = settings.image
    assert tuple(captured.size) == (WIDTH, HEIGHT) and captured.packed_file is not None
    assert settings.pointmap_source == "CAPTURE" and settings.camera == camera and settings.use_intrinsics
    assert (settings.fx, settings.fy, settings.cx, settings.cy) == pytest.approx((1.2 * WIDTH, 1.2 * WIDTH, 32, 24))

    assert bpy.ops.threedfy.add_prompt_mask(prompts='{"points": [[32, 24]]}', name="Clicked") == {"FINISHED"}
    assert bpy.ops.threedfy.new_paint_mask(name="Painted") == {"FINISHED"}
    painted = settings.masks["Painted"]
    assert painted.source == "PAINT" and tuple(painted.image.size) == (WIDTH, HEIGHT)
    _paint(painted.image, rectangle_mask(*BOX))

    camera.location.x += 3.0  # moved after the capture: the objects still go where the picture was taken from
    assert bpy.ops.threedfy.reconstruct_selection() == {"FINISHED"}
    collection = bpy.data.collections["3Dfy 001"]
    assert sorted(o.name for o in collection.objects) == ["Clicked", "Painted"]
    camera.location.x -= 3.0
    bpy.context.view_layer.update()
    assert iou(silhouette(bpy.data.objects["Painted"], camera), rectangle_mask(*BOX)) >= 0.98

    # The engine was given the capture's exact pointmap and intrinsics, so it estimated nothing.
    (job,) = recorded
    pointmap, intrinsics, _matrix = reference.read_capture(captured)
    assert np.array_equal(job["pointmap"], pointmap, equal_nan=True)
    assert 100 < np.isfinite(pointmap).all(axis=-1).sum() < WIDTH * HEIGHT  # the cube, and the sky around it
    assert job["intrinsics"] == pytest.approx(camera_intrinsics(camera))
    assert bpy.context.window_manager.threedfy_run.pointmap_source == "given"


def test_a_painted_mask_keeps_its_strokes_through_save_and_reload(threedfy, tmp_path):
    settings = bpy.context.scene.threedfy
    settings.image = image_from_array("photo", picture())
    assert bpy.ops.threedfy.new_paint_mask() == {"FINISHED"}
    _paint(settings.masks[0].image, rectangle_mask(*BOX))
    path = str(tmp_path / "painted.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    item = bpy.context.scene.threedfy.masks[0]
    mask = threedfy.submodule("scene.images").mask_array(item.image)
    assert item.name == "Object 1" and np.array_equal(mask > 0.5, rectangle_mask(*BOX))


def test_a_photo_with_create_camera_gets_a_camera_that_sees_it_as_the_engine_did(threedfy):
    image_from_array("desk.png", picture())
    assert bpy.ops.threedfy.reference_from_image(image="desk.png", create_camera=True) == {"FINISHED"}
    settings = bpy.context.scene.threedfy
    assert settings.pointmap_source == "ESTIMATE" and not settings.use_intrinsics and settings.camera is None
    image_from_array("mug mask", rectangle_mask(*BOX))
    assert bpy.ops.threedfy.add_masks(image="mug mask") == {"FINISHED"}

    assert bpy.ops.threedfy.reconstruct_selection() == {"FINISHED"}
    camera = bpy.context.scene.camera
    assert camera is not None and settings.camera == camera and camera.data.background_images[0].image.name == \
        "desk.png"
    assert iou(silhouette(bpy.data.objects["mug mask"], camera), rectangle_mask(*BOX)) >= 0.98
    assert bpy.context.window_manager.threedfy_run.pointmap_source == "estimated"
    cameras = len(bpy.data.cameras)
    assert bpy.ops.threedfy.reconstruct_selection() == {"FINISHED"}  # again: the same camera, updated
    assert len(bpy.data.cameras) == cameras and bpy.context.scene.camera == camera


def test_the_cameras_background_image_is_the_reference_with_the_cameras_intrinsics(threedfy):
    camera = add_camera(shift=(0.1, -0.05))
    before = snapshot()
    with pytest.raises(RuntimeError, match="Camera 'Camera' has no background image"):
        bpy.ops.threedfy.reference_from_background()
    assert snapshot() == before
    background = camera.data.background_images.new()
    background.image = image_from_array("plate.png", picture())
    assert bpy.ops.threedfy.reference_from_background() == {"FINISHED"}
    settings = bpy.context.scene.threedfy
    assert settings.image.name == "plate.png" and settings.camera == camera and settings.use_intrinsics
    k = camera_intrinsics(camera)
    assert (settings.fx, settings.fy, settings.cx, settings.cy) == pytest.approx((k[0, 0], k[1, 1], k[0, 2], k[1, 2]))

    image_from_array("vase mask", rectangle_mask(*BOX))
    assert bpy.ops.threedfy.add_masks(image="vase mask") == {"FINISHED"}
    assert bpy.ops.threedfy.reconstruct_selection() == {"FINISHED"}  # the fake engine poses with the given intrinsics
    assert iou(silhouette(bpy.data.objects["vase mask"], camera), rectangle_mask(*BOX)) >= 0.98


def test_a_blender_mask_is_filled_at_the_pictures_size_at_every_run(threedfy):
    camera = add_camera()
    settings = bpy.context.scene.threedfy
    settings.image = image_from_array("photo", picture())
    mask = bpy.data.masks.new("Vase")
    spline = mask.layers.new(name="Layer").splines.new()
    spline.points.add(3)

    def place(u0, v0, u1, v1):  # picture pixels -> the Mask's frame (64 wide: x = u / 64, y = 0.5 - (v - 24) / 64)
        for point, (u, v) in zip(spline.points, ((u0, v0), (u1, v0), (u1, v1), (u0, v1))):
            point.co = (u / WIDTH, 0.5 - (v - HEIGHT / 2) / WIDTH)
            point.handle_type = "VECTOR"

    place(*BOX)
    spline.use_cyclic = True
    assert bpy.ops.threedfy.add_blender_mask(mask="Vase") == {"FINISHED"}
    item = settings.masks[0]
    assert (item.name, item.source, item.blender_mask) == ("Vase", "BLENDER_MASK", mask)
    images = threedfy.submodule("scene.images")
    assert iou(images.mask_array(item.image) > 0.5, rectangle_mask(*BOX)) >= 0.99

    moved = (34, 12, 60, 40)
    place(*moved)  # edited after it was added: the run uses the Mask as it is now
    assert bpy.ops.threedfy.reconstruct_selection() == {"FINISHED"}
    assert iou(silhouette(bpy.data.objects["Vase"], camera), rectangle_mask(*moved)) >= 0.98
    assert iou(images.mask_array(item.image) > 0.5, rectangle_mask(*moved)) >= 0.99  # the entry shows it

    place(70, 10, 90, 20)  # outside the picture
    with pytest.raises(RuntimeError, match="Mask 'Vase' covers no pixel of the picture"):
        bpy.ops.threedfy.add_blender_mask(mask="Vase")


# ----------------------------------------------------------------------------------------------------------------
# Bad input: a clear message, nothing changed


def _reference_with_a_mask(name="photo"):
    settings = bpy.context.scene.threedfy
    settings.image = image_from_array(name, picture())
    assert bpy.ops.threedfy.new_paint_mask(name="Vase") == {"FINISHED"}
    _paint(settings.masks[0].image, rectangle_mask(*BOX))
    return settings


def test_a_reference_whose_picture_was_deleted(threedfy):
    add_camera()
    settings = _reference_with_a_mask()
    bpy.data.images.remove(settings.image)
    before = snapshot()
    with pytest.raises(RuntimeError, match="The reference has no picture: capture from the camera, or choose"):
        bpy.ops.threedfy.reconstruct_selection()
    with pytest.raises(RuntimeError, match="Choose the reference picture first"):
        bpy.ops.threedfy.new_paint_mask()
    errors = threedfy.submodule("engine.errors")
    with pytest.raises(errors.InputError, match=r"The reference has no picture \(was it deleted\?\)"):
        threedfy.submodule("scene.reference").read_reference(bpy.context.scene, settings)
    assert snapshot() == before and len(settings.masks) == 1


def test_a_picture_with_no_pixels(threedfy, tmp_path):
    add_camera()
    path = write_picture(tmp_path / "gone.png", picture())
    image = bpy.data.images.load(str(path))
    os.remove(path)
    image.reload()  # its file is gone: no pixels
    assert tuple(image.size) == (0, 0)
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"Image 'gone.png' has no pixels \(is its file missing\?\)"):
        bpy.ops.threedfy.reference_from_image(image="gone.png")
    settings = bpy.context.scene.threedfy
    assert settings.image is None
    settings.image = image
    item = settings.masks.add()
    item.name, item.image = "Vase", image_from_array("vase mask", rectangle_mask(*BOX))
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"Image 'gone.png' has no pixels \(is its file missing\?\)"):
        bpy.ops.threedfy.reconstruct_selection()
    with pytest.raises(RuntimeError, match="has no pixels"):
        bpy.ops.threedfy.new_paint_mask()
    assert snapshot() == before and len(settings.masks) == 1


def test_a_mask_of_another_size(threedfy, tmp_path):
    add_camera()
    settings = _reference_with_a_mask()
    before = snapshot()
    small = write_picture(tmp_path / "small.png", np.ones((24, 32), bool))
    with pytest.raises(RuntimeError, match=r"Mask 'small.png' is 32x24 but the picture is 64x48"):
        bpy.ops.threedfy.add_masks(filepath=str(small))
    assert snapshot() == before  # the loaded file was taken back
    settings.masks[0].image.scale(32, 24)
    with pytest.raises(RuntimeError, match=r"Mask 'Vase' is 32x24 but the picture is 64x48"):
        bpy.ops.threedfy.reconstruct_selection()
    assert snapshot() == before


def test_an_empty_or_missing_mask_and_captured_depth_of_another_picture(threedfy):
    add_camera()
    settings = _reference_with_a_mask()
    _paint(settings.masks[0].image, np.zeros((HEIGHT, WIDTH), bool))
    before = snapshot()
    with pytest.raises(RuntimeError, match="Mask 'Vase' is empty"):
        bpy.ops.threedfy.reconstruct_selection()
    assert snapshot() == before
    bpy.data.images.remove(settings.masks[0].image)
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"Mask 'Vase' has no image \(was it deleted\?\)"):
        bpy.ops.threedfy.reconstruct_selection()
    settings.pointmap_source = "CAPTURE"  # but the picture is a photo, not a capture
    with pytest.raises(RuntimeError, match="Picture 'photo' holds no camera capture"):
        bpy.ops.threedfy.reconstruct_selection()
    assert snapshot() == before
