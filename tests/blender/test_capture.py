"""scene/capture.py in the bpy module: renders of known shapes give points on their surfaces, and the scene's
settings come back unchanged."""
from __future__ import annotations

import os
import tempfile

import bpy
import numpy as np
import pytest
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from scene import capture
from scene.camera_model import CaptureError
from tests.blender.capture_fixtures import (
    SPHERE_CENTRE,
    SPHERE_RADIUS,
    WORLD_COLOUR,
    build_scene,
    pixel_rays,
    ray_hits,
    settings_snapshot,
    surface_distance,
)

WIDTH, HEIGHT = 64, 48


def _variant(scene: bpy.types.Scene, name: str) -> bpy.types.Object:
    """Set up one of the tested cameras on the scene; returns the camera object."""
    camera = scene.camera
    data = camera.data
    if name == "perspective":
        camera.scale = (1.5, 1.5, 1.5)  # renders ignore the camera's scale; so must the returned matrix
    elif name == "lens_shift":
        data.shift_x, data.shift_y = 0.12, -0.08
    elif name == "non_square_pixels":
        # 64·1 < 48·1.6: AUTO fits the sensor width to the picture's height
        scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = 1.0, 1.6
        data.shift_x, data.shift_y = -0.05, 0.1
    elif name == "sensor_fit_vertical":
        data.sensor_fit, data.sensor_height, data.lens = "VERTICAL", 20.0, 40.0
        data.shift_x, data.shift_y = 0.1, 0.05
    elif name == "depth_of_field":
        data.dof.use_dof, data.dof.focus_distance, data.dof.aperture_fstop = True, 3.0, 0.1
    elif name == "orthographic":
        data.type, data.ortho_scale = "ORTHO", 8.0
        data.shift_x = 0.05
    else:
        raise ValueError(name)
    bpy.context.view_layer.update()
    return camera


def _world_points(ref: capture.Reference) -> tuple[np.ndarray, np.ndarray]:
    """(H·W, 3) world points of the pointmap (NaN rows where invalid) and the (H·W,) validity mask."""
    p_cam = ref.pointmap.reshape(-1, 3).astype(np.float64)
    rotation, location = ref.camera_matrix_world[:3, :3], ref.camera_matrix_world[:3, 3]
    return p_cam @ rotation.T + location, np.isfinite(p_cam).all(axis=1)


def _pixel_centres(width: int, height: int) -> np.ndarray:
    v, u = np.mgrid[0:height, 0:width]
    return np.stack([u + 0.5, v + 0.5], axis=-1).reshape(-1, 2).astype(np.float64)  # (H·W, 2) as (u, v)


def _check_points_against_the_shapes(scene, camera, ref) -> np.ndarray:
    """The checks every render must pass; returns the validity mask (H·W,)."""
    world, valid = _world_points(ref)
    assert ref.pointmap.shape == (HEIGHT, WIDTH, 3) and ref.pointmap.dtype == np.float32

    # 1. Every valid point lies on a true surface within 1 mm per metre of depth.
    depth = -ref.pointmap.reshape(-1, 3)[valid, 2].astype(np.float64)
    ratio = surface_distance(world[valid]) / depth
    assert ratio.max() <= 1e-3, f"a point lies {ratio.max() * 1000:.2f} mm per metre of depth off the surfaces"

    # 2. Pixels whose centre ray surely hits a shape have a point; pixels that surely see nothing have none.
    origins, directions = pixel_rays(scene, camera)
    surely_hit = ray_hits(origins, directions, grow=-0.01)
    surely_empty = ~ray_hits(origins, directions, grow=0.01)
    assert surely_hit.sum() > 300 and surely_empty.sum() > 100  # the scene frames as intended
    assert valid[surely_hit].all(), f"{(~valid[surely_hit]).sum()} pixels that see a shape have no point"
    assert not valid[surely_empty].any(), f"{valid[surely_empty].sum()} background pixels have a point"
    assert np.isnan(ref.pointmap.reshape(-1, 3)[~valid]).all()

    # 3. Blender's own projection of each world point lands on its pixel centre.
    blender_uv = np.array([tuple(world_to_camera_view(scene, camera, Vector(p)))[:2] for p in world[valid]])
    blender_px = np.stack([blender_uv[:, 0] * WIDTH, (1.0 - blender_uv[:, 1]) * HEIGHT], axis=-1)
    np.testing.assert_allclose(blender_px, _pixel_centres(WIDTH, HEIGHT)[valid], atol=2e-3)
    return valid


@pytest.mark.parametrize(
    "variant",
    ["perspective", "lens_shift", "non_square_pixels", "sensor_fit_vertical", "depth_of_field", "orthographic"],
)
def test_every_valid_point_lies_on_the_true_surface_and_the_background_is_empty(variant):
    scene = build_scene(WIDTH, HEIGHT)
    camera = _variant(scene, variant)
    ref = capture.render_reference(scene, resolution=(WIDTH, HEIGHT), engine="CYCLES", samples=2)
    valid = _check_points_against_the_shapes(scene, camera, ref)
    assert ref.camera_name == "RefCam"

    world, _ = _world_points(ref)
    rotation, location = ref.camera_matrix_world[:3, :3], ref.camera_matrix_world[:3, 3]
    p_cam = (world[valid] - location) @ rotation  # back into the camera frame
    if variant == "orthographic":
        assert ref.intrinsics is None and ref.orthographic
        with pytest.raises(CaptureError, match="orthographic"):
            ref.projection.pinhole()
        p = ref.projection
        uv = np.stack([p.fx * p_cam[:, 0] + p.cx, -p.fy * p_cam[:, 1] + p.cy], axis=-1)
    else:
        # The engine's pinhole: OpenCV camera (x right, y down, z forward) = OpenGL with y, z negated.
        fx, fy, cx, cy = ref.intrinsics
        x_cv, y_cv, z_cv = p_cam[:, 0], -p_cam[:, 1], -p_cam[:, 2]
        uv = np.stack([fx * x_cv / z_cv + cx, fy * y_cv / z_cv + cy], axis=-1)
    np.testing.assert_allclose(uv, _pixel_centres(WIDTH, HEIGHT)[valid], atol=1e-3)


def test_workbench_depth_is_exact_with_anti_aliasing_on():
    scene = build_scene(WIDTH, HEIGHT)
    scene.display.render_aa = "8"
    ref = capture.render_reference(scene, resolution=(WIDTH, HEIGHT), engine="BLENDER_WORKBENCH")
    _check_points_against_the_shapes(scene, scene.camera, ref)


@pytest.mark.skipif(
    not os.environ.get("THREEDFY_EEVEE_TESTS"),
    reason="EEVEE compiles its shaders on software OpenGL for minutes; set THREEDFY_EEVEE_TESTS=1 to run",
)
def test_eevee_depth_is_exact_with_many_samples():
    scene = build_scene(WIDTH, HEIGHT)
    ref = capture.render_reference(scene, resolution=(WIDTH, HEIGHT), engine="BLENDER_EEVEE_NEXT", samples=8)
    _check_points_against_the_shapes(scene, scene.camera, ref)


def test_picture_is_the_colour_managed_render_aligned_with_the_pointmap():
    scene = build_scene(WIDTH, HEIGHT)
    scene.cycles.use_denoising = False  # the denoiser smears a flat background by up to ~15 levels
    ref = capture.render_reference(scene, resolution=(WIDTH, HEIGHT), engine="CYCLES", samples=16)
    assert ref.image.shape == (HEIGHT, WIDTH, 3) and ref.image.dtype == np.uint8
    pixels = ref.image.reshape(-1, 3).astype(int)
    world, valid = _world_points(ref)

    # Background away from silhouettes (which the pixel filter blends): the world colour through the Standard
    # view transform (sRGB), no dither.
    near_shape = np.pad(valid.reshape(HEIGHT, WIDTH), 2)
    near_shape = np.lib.stride_tricks.sliding_window_view(near_shape, (5, 5)).any(axis=(-2, -1)).reshape(-1)
    linear = np.array(WORLD_COLOUR)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    assert (~near_shape).sum() > 300
    assert np.abs(pixels[~near_shape] - np.round(srgb * 255)).max() <= 1

    # The red sphere is red exactly where the pointmap says the sphere is (row 0 = top in both).
    on_sphere = np.zeros_like(valid)
    on_sphere[valid] = np.abs(np.linalg.norm(world[valid] - SPHERE_CENTRE, axis=-1) - SPHERE_RADIUS) < 0.01
    not_sphere = valid & ~on_sphere
    on_sphere, not_sphere = _inner(on_sphere), _inner(not_sphere)  # away from blended edges
    assert on_sphere.sum() > 50 and not_sphere.sum() > 50
    red, green = pixels[:, 0], pixels[:, 1]
    assert (red[on_sphere] > 2 * green[on_sphere] + 10).mean() > 0.95
    assert (red[not_sphere] < green[not_sphere] + 30).mean() > 0.95


def _inner(mask: np.ndarray) -> np.ndarray:
    """(H·W,) mask -> the pixels whose 3x3 neighbourhood is all in it."""
    padded = np.pad(mask.reshape(HEIGHT, WIDTH), 1)
    return np.lib.stride_tricks.sliding_window_view(padded, (3, 3)).all(axis=(-2, -1)).reshape(-1)


# ----------------------------------------------------------------------------------------------------------------
# The scene is left as it was


def _busy_scene() -> tuple[bpy.types.Scene, bpy.types.Object]:
    """A scene whose settings differ from everything the capture sets, plus a second camera to capture from."""
    scene = build_scene(80, 60)
    render = scene.render
    render.resolution_percentage = 50
    render.engine = "BLENDER_WORKBENCH"
    render.use_border = True
    render.use_motion_blur = True
    render.image_settings.file_format = "JPEG"
    render.image_settings.quality = 70
    render.image_settings.color_management = "OVERRIDE"
    scene.cycles.samples = 77
    scene.cycles.filter_width = 2.0
    scene.cycles.use_denoising = True
    scene.eevee.taa_render_samples = 33
    scene.display.render_aa = "16"
    scene.view_layers[0].name = "My.Layer"
    layer = scene.view_layers[0]
    layer.use_pass_z = False
    layer.use_pass_normal = layer.use_pass_mist = layer.use_pass_cryptomatte_object = True
    layer.cycles.denoising_store_passes = True
    scene.view_layers.new("Other")
    other = bpy.data.objects.new("OtherCam", bpy.data.cameras.new("OtherCam"))
    scene.collection.objects.link(other)
    other.matrix_world = scene.camera.matrix_world
    other.data.dof.use_dof = True
    other.data.dof.focus_distance = 3.0
    return scene, other


def test_scene_settings_are_unchanged_after_capture(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    scene, other = _busy_scene()
    before, images = settings_snapshot(scene), {im.name for im in bpy.data.images}
    read_exr, channels = capture._read_exr, []
    monkeypatch.setattr(capture, "_read_exr", lambda path: channels.extend(read_exr(path)) or read_exr(path))

    ref = capture.render_reference(scene, camera=other, engine="CYCLES", samples=1)

    assert ref.image.shape == (30, 40, 3) and ref.pointmap.shape == (30, 40, 3)  # 80x60 at 50%
    assert ref.camera_name == "OtherCam" and np.isfinite(ref.pointmap).any()
    # only the passes the capture reads were rendered (the user's normal, mist, cryptomatte... were off)
    assert "My.Layer.Depth.Z" in channels
    assert {name.split(".")[-2] for name in channels} <= {"Combined", "Depth", "Noisy Image"}
    after = settings_snapshot(scene)
    assert {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)} == {}
    assert {im.name for im in bpy.data.images} - images <= {"Render Result"}
    assert list(tmp_path.iterdir()) == []


def test_scene_settings_are_unchanged_when_a_render_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    scene, other = _busy_scene()
    before = settings_snapshot(scene)
    real_render, calls = capture._render, []

    def render_then_fail(*args):
        calls.append(args)
        if len(calls) == 2:  # the depth render: picture settings and depth settings are both in place
            raise RuntimeError("render failed")
        real_render(*args)

    monkeypatch.setattr(capture, "_render", render_then_fail)
    with pytest.raises(RuntimeError, match="render failed"):
        capture.render_reference(scene, camera=other, resolution=(20, 15), engine="CYCLES", samples=3)
    assert len(calls) == 2
    after = settings_snapshot(scene)
    assert {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)} == {}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "case, match",
    [
        ("no camera", "no active camera"),
        ("not a camera", "not a camera"),
        ("panoramic", "perspective or orthographic"),
        ("unknown engine", "not supported"),
        ("bad resolution", "resolution"),
        ("zero samples", "samples"),
    ],
)
def test_unusable_requests_are_refused_before_anything_changes(case, match):
    scene = build_scene(WIDTH, HEIGHT)
    kwargs = dict(resolution=(WIDTH, HEIGHT))
    if case == "no camera":
        scene.camera = None
    elif case == "not a camera":
        kwargs["camera"] = bpy.data.objects["Cube"]
    elif case == "panoramic":
        scene.camera.data.type = "PANO"
    elif case == "unknown engine":
        kwargs["engine"] = "OCTANE"
    elif case == "bad resolution":
        kwargs["resolution"] = (0, 48)
    else:
        kwargs["samples"] = 0
    before = settings_snapshot(scene)
    with pytest.raises(CaptureError, match=match):
        capture.render_reference(scene, **kwargs)
    assert settings_snapshot(scene) == before
