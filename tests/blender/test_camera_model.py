"""scene/camera_model.py: Blender's projection rules and depth -> pointmap, in numpy only (no bpy here)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from scene.camera_model import (
    BACKGROUND_DEPTH,
    CameraParams,
    CaptureError,
    camera_for_intrinsics,
    image_size,
    pointmap_from_depth,
    project,
    projection,
)


def test_auto_fit_spans_the_sensor_width_across_the_wider_side():
    landscape = projection(CameraParams(lens=50, sensor_width=36, resolution_x=640, resolution_y=480))
    assert landscape.intrinsics == pytest.approx((50 / 36 * 640, 50 / 36 * 640, 320, 240))
    # portrait: still the sensor *width*, now across the height (Blender ignores sensor_height under AUTO)
    portrait = projection(CameraParams(lens=50, sensor_width=36, sensor_height=10, resolution_x=480, resolution_y=640))
    assert portrait.intrinsics == pytest.approx((50 / 36 * 640, 50 / 36 * 640, 240, 320))


def test_fixed_fits_use_their_own_sensor_side_whatever_the_picture_shape():
    vertical = projection(
        CameraParams(
            lens=35, sensor_width=36, sensor_height=20, sensor_fit="VERTICAL", resolution_x=800, resolution_y=600
        )
    )
    assert vertical.fx == pytest.approx(35 / 20 * 600) and vertical.fy == pytest.approx(vertical.fx)
    horizontal = projection(
        CameraParams(lens=35, sensor_width=30, sensor_fit="HORIZONTAL", resolution_x=600, resolution_y=800)
    )
    assert horizontal.fx == pytest.approx(35 / 30 * 600)


def test_lens_shift_moves_the_principal_point_against_the_shift_by_the_fitted_side():
    base = dict(lens=50, resolution_x=400, resolution_y=300)
    p = projection(CameraParams(**base, shift_x=0.1, shift_y=0.2))
    # the view moves right and up, so the scene (and its principal point) moves left and down in the picture
    assert (p.cx, p.cy) == pytest.approx((200 - 0.1 * 400, 150 + 0.2 * 400))
    q = projection(CameraParams(**base, sensor_fit="VERTICAL", shift_x=0.1, shift_y=0.2))
    assert (q.cx, q.cy) == pytest.approx((200 - 0.1 * 300, 150 + 0.2 * 300))


def test_non_square_pixels_are_taller_and_decide_the_auto_fit():
    # 400·1 vs 300·2: the picture is taller than wide in real units, so AUTO fits the sensor width to its height
    p = projection(CameraParams(lens=50, sensor_width=36, resolution_x=400, resolution_y=300, pixel_aspect_y=2.0))
    fitted = 2.0 * 300  # the height in pixel widths
    assert p.fx == pytest.approx(50 / 36 * fitted)
    assert p.fy == pytest.approx(p.fx / 2.0)  # a pixel twice as tall covers twice the angle vertically
    q = projection(
        CameraParams(lens=50, resolution_x=400, resolution_y=300, pixel_aspect_y=2.0, shift_x=0.1, shift_y=0.1)
    )
    assert (q.cx, q.cy) == pytest.approx((200 - 0.1 * fitted, 150 + 0.1 * fitted / 2.0))
    # only the ratio of the two aspects matters
    r = projection(CameraParams(lens=50, resolution_x=400, resolution_y=300, pixel_aspect_x=3.0, pixel_aspect_y=6.0))
    assert r == p


def test_the_rendered_size_truncates_the_percentage():
    cam = CameraParams(resolution_x=1001, resolution_y=333, resolution_percentage=33)
    assert image_size(cam) == (330, 109)
    assert projection(cam).width == 330 and projection(cam).cx == pytest.approx(165)


def test_orthographic_cameras_have_a_scale_not_a_pinhole():
    p = projection(CameraParams(type="ORTHO", ortho_scale=8.0, resolution_x=64, resolution_y=48, shift_x=0.25))
    assert p.orthographic and p.intrinsics is None
    assert (p.fx, p.fy, p.cx, p.cy) == pytest.approx((8.0, 8.0, 32 - 0.25 * 64, 24))  # px per scene unit
    with pytest.raises(CaptureError, match="orthographic camera has no pinhole"):
        p.pinhole()
    depth = np.full((48, 64), 3.0, dtype=np.float32)
    points = pointmap_from_depth(depth, p, clip_end=100.0)
    assert np.allclose(points[..., 2], -3.0)
    assert np.allclose(np.diff(points[..., 0], axis=1), 1 / 8.0)  # one pixel is 1/8 scene unit
    assert np.allclose(np.diff(points[..., 1], axis=0), -1 / 8.0)  # rows run down, +Y is up


def test_pointmap_points_lie_on_their_pixel_rays_at_planar_depth():
    g = np.random.default_rng(7)
    p = projection(
        CameraParams(lens=28, sensor_fit="VERTICAL", sensor_height=18, shift_x=-0.07, shift_y=0.11,
                     resolution_x=50, resolution_y=40, pixel_aspect_x=1.3)
    )
    depth = g.uniform(0.5, 20.0, size=(40, 50)).astype(np.float32)
    points = pointmap_from_depth(depth, p, clip_end=100.0)
    assert points.dtype == np.float32 and points.shape == (40, 50, 3)
    np.testing.assert_allclose(-points[..., 2], depth, rtol=1e-6)  # planar depth, not ray length
    v, u = np.mgrid[0:40, 0:50]
    np.testing.assert_allclose(project(points, p), np.stack([u + 0.5, v + 0.5], axis=-1), atol=1e-4)
    # a point to the right and above the principal point is at +X, +Y (OpenGL camera)
    i, j = 0, 49  # top-right pixel
    assert (j + 0.5 > p.cx) == (points[i, j, 0] > 0) and (i + 0.5 < p.cy) == (points[i, j, 1] > 0)


def test_pixels_without_a_surface_become_nan():
    p = projection(CameraParams(resolution_x=4, resolution_y=2, clip_end=10.0))
    depth = np.array([[BACKGROUND_DEPTH, np.inf, np.nan, 0.0], [-1.0, 10.0, 9.99, 2.0]], dtype=np.float32)
    points = pointmap_from_depth(depth, p, clip_end=10.0)
    valid = np.isfinite(points).all(axis=-1)
    assert valid.tolist() == [[False, False, False, False], [False, False, True, True]]
    assert np.isnan(points[~valid]).all()


def test_depth_of_the_wrong_size_is_refused():
    p = projection(CameraParams(resolution_x=4, resolution_y=2))
    with pytest.raises(CaptureError, match="4x2"):
        pointmap_from_depth(np.ones((4, 2)), p, clip_end=10.0)


def test_camera_for_intrinsics_renders_back_to_the_same_intrinsics():
    g = np.random.default_rng(3)
    for _ in range(20):
        width, height = int(g.integers(16, 2000)), int(g.integers(16, 2000))
        fx = g.uniform(0.3, 3.0) * width
        fy = fx * g.uniform(0.5, 2.0)
        cx, cy = g.uniform(0.2, 0.8) * width, g.uniform(0.2, 0.8) * height
        cam = camera_for_intrinsics(fx, fy, cx, cy, width, height)
        assert cam.pixel_aspect_x >= 1 and cam.pixel_aspect_y >= 1  # Blender's allowed range
        p = projection(cam)
        assert (p.width, p.height) == (width, height)
        np.testing.assert_allclose(p.intrinsics, (fx, fy, cx, cy), rtol=1e-9)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(type="PANO"), "panoramic"),
        (dict(sensor_fit="DIAGONAL"), "sensor_fit"),
        (dict(lens=0.0), "lens"),
        (dict(pixel_aspect_y=math.nan), "pixel_aspect_y"),
        (dict(clip_start=5.0, clip_end=1.0), "clip_start"),
        (dict(resolution_x=1, resolution_percentage=50), "empty image"),
    ],
)
def test_unusable_camera_settings_are_refused(settings, match):
    with pytest.raises(CaptureError, match=match):
        CameraParams(**settings)


def test_a_background_image_that_fills_the_frame_has_the_cameras_intrinsics_at_its_own_size():
    from scene.camera_model import background_intrinsics

    render = projection(CameraParams(lens=40, sensor_width=36, shift_x=0.1, shift_y=-0.05, resolution_x=640,
                                     resolution_y=480))
    for method in ("STRETCH", "FIT", "CROP"):  # same aspect: all three lay the image exactly over the frame
        fx, fy, cx, cy = background_intrinsics(render, (1.0, 1.0), 1280, 960, method)
        assert (fx, fy, cx, cy) == pytest.approx((2 * render.fx, 2 * render.fy, 2 * render.cx, 2 * render.cy))


def test_a_square_background_is_letterboxed_by_fit_and_cut_by_crop_around_the_frames_centre():
    from scene.camera_model import background_intrinsics

    render = projection(CameraParams(lens=36, sensor_width=36, resolution_x=64, resolution_y=48))  # f = 64 px
    # FIT: the image's 64 rows span the frame's 48 (0.75 frame px each), centred across.
    assert background_intrinsics(render, (1.0, 1.0), 64, 64, "FIT") == pytest.approx((64 / 0.75, 64 / 0.75, 32, 32))
    # CROP: the image's 64 columns span the frame's 64; its middle 48 rows are seen.
    assert background_intrinsics(render, (1.0, 1.0), 64, 64, "CROP") == pytest.approx((64, 64, 32, 32))
    # STRETCH: squeezed to the frame, so its pixels are not square any more.
    assert background_intrinsics(render, (1.0, 1.0), 64, 64, "STRETCH") == pytest.approx((64, 64 * 64 / 48, 32, 32))
    with pytest.raises(CaptureError, match="orthographic"):
        background_intrinsics(projection(CameraParams(type="ORTHO")), (1.0, 1.0), 64, 64, "FIT")
