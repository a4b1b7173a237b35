"""Photos without a pointmap: MoGe estimates one (tiny MoGe with the parity weights, saved as a model.pt)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.depth import DepthEstimator
from engine.errors import WeightsError
from engine.pipeline import Pipeline
from tests.engine.tiny_moge import write_tiny_moge


@pytest.fixture(scope="module")
def moge_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("moge") / "model.pt"
    write_tiny_moge(path)
    return path


def _photo(h=56, w=84, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 5)], -1) + 0.05 * rng.random((h, w, 3))
    mask = ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2 < 1
    return np.clip(image, 0, 1).astype(np.float32), mask


def test_the_estimator_gives_points_in_front_of_the_camera_and_pixel_intrinsics(moge_file):
    rgb, _ = _photo()
    points, k = DepthEstimator(str(moge_file))(rgb)
    assert points.shape == rgb.shape
    valid = np.isfinite(points).all(axis=-1)
    assert valid.any()
    assert (points[valid, 2] > 0).all()  # PyTorch3D frame: +Z forward
    assert np.isnan(points[~valid]).all()  # invalid pixels are NaN, as upstream's frame flip makes them
    h, w = rgb.shape[:2]
    assert k[0, 0] > 0 and k[1, 1] > 0
    np.testing.assert_allclose(k[:2, 2], [w / 2, h / 2])


def test_a_photo_without_a_pointmap_goes_through_the_pipeline(moge_file):
    rgb, mask = _photo()
    pipe = Pipeline.from_source("random", "tiny", device="cpu", depth_weights=str(moge_file))
    result = pipe.reconstruct(rgb, [mask], seed=1, quality="fast", outputs=("gaussians",))
    assert result.pointmap_source == "estimated"
    assert np.isfinite(result.objects[0].object_to_camera).all()
    assert result.intrinsics[0, 0] > 0


def test_missing_moge_weights_name_the_file(tmp_path):
    rgb, _ = _photo()
    with pytest.raises(WeightsError, match="MoGe weights not found"):
        DepthEstimator(str(tmp_path / "nowhere" / "model.pt"))(rgb)


def test_a_known_field_of_view_fixes_the_estimators_focal(moge_file):
    rgb, _ = _photo(seed=3)
    h, w = rgb.shape[:2]
    estimator = DepthEstimator(str(moge_file))
    _, free = estimator(rgb)
    fx = 1.7 * free[0, 0]  # a camera clearly unlike what MoGe recovers by itself
    fov_x = np.degrees(2 * np.arctan(w / (2 * fx)))
    points, k = estimator(rgb, fov_x)
    np.testing.assert_allclose(k[0, 0], fx, rtol=1e-4)
    valid = np.isfinite(points).all(axis=-1)
    # The points project through about that focal: x / z * fx + cx lands near the pixel column (MoGe's own
    # points, not re-projected: the pipeline asks for force_projection=False, as upstream does).
    yy, xx = np.mgrid[0:h, 0:w]
    u = -points[..., 0] / points[..., 2] * fx + (w / 2 - 0.5)  # PyTorch3D frame: +X left
    assert np.median(np.abs(u[valid] - xx[valid])) < 0.5 * np.median(np.abs(xx[valid] - w / 2))


def test_intrinsics_given_with_a_photo_are_kept_and_steer_the_depth_estimate(moge_file, monkeypatch):
    rgb, mask = _photo(seed=4)
    h, w = rgb.shape[:2]
    pipe = Pipeline.from_source("random", "tiny", device="cpu", depth_weights=str(moge_file))
    seen = []
    estimate = pipe.depth.__class__.__call__
    monkeypatch.setattr(pipe.depth.__class__, "__call__", lambda self, image, fov_x=None: (
        seen.append(fov_x), estimate(self, image, fov_x))[1])
    k = np.array([[90.0, 0, w / 2], [0, 90.0, h / 2], [0, 0, 1]])
    result = pipe.reconstruct(rgb, [mask], intrinsics=k, seed=1, quality="fast", outputs=("gaussians",))
    assert result.pointmap_source == "estimated"
    np.testing.assert_allclose(result.intrinsics, k)
    np.testing.assert_allclose(seen, [np.degrees(2 * np.arctan(w / 180.0))])
