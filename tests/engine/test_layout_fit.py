"""Layout refinement: a pose put wrong in scale, in the picture's plane and in depth comes back to the pose the
mask and pointmap were rendered from."""
from __future__ import annotations

import json
import math
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.config import MODEL_NAMES, preset
from engine.errors import Cancelled, InputError
from engine.layout_fit import fit_layout, voxel_points
from engine.occupancy import keep_surface
from engine.pose import Pose, quaternion_to_matrix

SIZE, FOCAL, GRID = 96, 110.0, 64


def _box_scene(seed: int):
    """A random box (half sides in [0.15, 0.45], object frame) under a random pose ~2 m away, its surface-shell
    voxels on the 64^3 grid, and the mask and pointmap (PyTorch3D frame, NaN off the object) ray-cast from it."""
    gen = torch.Generator().manual_seed(seed)
    half = 0.15 + 0.3 * torch.rand(3, generator=gen, dtype=torch.float64)
    q = torch.randn(4, generator=gen, dtype=torch.float64)
    q = q / q.norm() * (1 if q[0] >= 0 else -1)
    t = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64) + 0.15 * (torch.rand(3, generator=gen) - 0.5).double()
    scale = 0.5 + 0.2 * float(torch.rand((), generator=gen))
    k = torch.tensor([[FOCAL, 0, SIZE / 2], [0, FOCAL, SIZE / 2], [0, 0, 1]], dtype=torch.float64)
    v, u = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    rays = torch.stack([-(u - SIZE / 2) / FOCAL, -(v - SIZE / 2) / FOCAL, torch.ones_like(u)], -1).double()
    # Slab test in the object frame: p_local = ((p_cam - t) / s) @ R^T.
    r = quaternion_to_matrix(q)
    origin, direction = (-t / scale) @ r.T, (rays / scale) @ r.T  # (3,), (H, W, 3)
    near_far = torch.stack([(-half - origin) / direction, (half - origin) / direction])  # (2, H, W, 3)
    t_in, t_out = near_far.amin(0).amax(-1), near_far.amax(0).amin(-1)  # (H, W)
    hit = (t_in <= t_out) & (t_in > 0)
    pointmap = torch.where(hit[..., None], t_in[..., None] * rays, torch.full_like(rays, math.nan)).float()
    axis = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID - 0.5
    solid = (torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).abs() <= half).all(-1)
    xyz = torch.nonzero(solid)
    coords = keep_surface(torch.cat([torch.zeros_like(xyz[:, :1]), xyz], 1).int())
    return Pose(q.float(), t.float(), scale), voxel_points(coords, GRID), hit, pointmap, k


def _errors(pose: Pose, truth: Pose) -> tuple[float, float]:
    """(translation error / true depth, |log scale ratio|)."""
    dt = float((pose.translation - truth.translation).norm() / truth.translation[2])
    return dt, abs(math.log(pose.scale / truth.scale))


@pytest.mark.parametrize("seed, factor, shift", [(0, 1.2, (0.08, -0.05, 0.3)), (1, 0.8, (-0.06, 0.07, -0.25)),
                                                 (2, 1.15, (0.0, 0.1, 0.0)), (3, 0.85, (0.05, 0.0, 0.35))])
def test_a_perturbed_pose_moves_back_towards_the_rendered_one(seed, factor, shift):
    truth, points, mask, pointmap, k = _box_scene(seed)
    wrong = Pose(truth.rotation, truth.translation + torch.tensor(shift), truth.scale * factor)
    fit = fit_layout(points, wrong, mask, pointmap, k, 1 / GRID)
    dt_before, ds_before = _errors(wrong, truth)
    dt_after, ds_after = _errors(fit.pose, truth)
    assert dt_after < 0.2 * dt_before and dt_after < 0.02, (dt_before, dt_after)
    assert ds_after < 0.3 * ds_before + 0.01 and ds_after < 0.04, (ds_before, ds_after)
    assert fit.iou_after > fit.iou_before + 0.05 and fit.iou_after > 0.9
    assert torch.equal(fit.pose.rotation, wrong.rotation)  # the rotation is kept


def test_the_depth_step_alone_slides_the_object_along_its_rays():
    # A pose scaled about the camera centre has the true silhouette: only the pointmap can tell.
    truth, points, mask, pointmap, k = _box_scene(4)
    far = Pose(truth.rotation, truth.translation * 1.3, truth.scale * 1.3)
    fit = fit_layout(points, far, mask, pointmap, k, 1 / GRID)
    assert fit.depth_ratio == pytest.approx(1 / 1.3, rel=0.03)
    assert _errors(fit.pose, truth)[0] < 0.02


def test_refining_is_deterministic():
    truth, points, mask, pointmap, k = _box_scene(5)
    wrong = Pose(truth.rotation, truth.translation + torch.tensor([0.05, 0.03, 0.2]), truth.scale * 1.1)
    a = fit_layout(points, wrong, mask, pointmap, k, 1 / GRID)
    b = fit_layout(points, wrong, mask, pointmap, k, 1 / GRID)
    assert torch.equal(a.pose.translation, b.pose.translation) and a.pose.scale == b.pose.scale


def test_pixels_of_an_object_in_front_are_left_out_of_the_comparison():
    truth, points, mask, pointmap, k = _box_scene(6)
    rows = torch.nonzero(mask.any(1)).flatten()
    cover = torch.zeros_like(mask)
    cover[: int(rows.float().mean()), :] = True  # an occluder hides the object's upper half
    visible = mask & ~cover
    wrong = Pose(truth.rotation, truth.translation + torch.tensor([0.04, -0.03, 0.0]), truth.scale * 0.9)
    told = fit_layout(points, wrong, visible, pointmap, k, 1 / GRID, ignore=cover)
    untold = fit_layout(points, wrong, visible, pointmap, k, 1 / GRID)
    assert _errors(told.pose, truth)[0] < 0.02
    assert _errors(told.pose, truth)[0] < _errors(untold.pose, truth)[0]


def test_an_empty_mask_leaves_the_pose_as_it_was():
    truth, points, mask, pointmap, k = _box_scene(7)
    fit = fit_layout(points, truth, torch.zeros_like(mask), pointmap, k, 1 / GRID)
    assert fit.pose is truth and math.isnan(fit.iou_before) and math.isnan(fit.depth_ratio)


def test_a_pointmap_without_a_finite_point_leaves_the_depth_alone():
    truth, points, mask, pointmap, k = _box_scene(8)
    wrong = Pose(truth.rotation, truth.translation + torch.tensor([0.05, 0.0, 0.3]), truth.scale)
    fit = fit_layout(points, wrong, mask, torch.full_like(pointmap, math.nan), k, 1 / GRID)
    assert math.isnan(fit.depth_ratio)
    assert float(fit.pose.translation[2]) == pytest.approx(float(wrong.translation[2]))  # the silhouette step keeps z
    assert fit.iou_after > fit.iou_before


def test_an_object_behind_the_camera_is_not_moved():
    truth, points, mask, pointmap, k = _box_scene(9)
    behind = Pose(truth.rotation, truth.translation * torch.tensor([1.0, 1.0, -1.0]), truth.scale)
    fit = fit_layout(points, behind, mask, pointmap, k, 1 / GRID)
    assert fit.pose is behind


def test_a_mask_of_the_wrong_shape_is_refused_naming_it():
    truth, points, mask, pointmap, k = _box_scene(10)
    with pytest.raises(InputError, match="mask must be"):
        fit_layout(points, truth, mask[None], pointmap, k, 1 / GRID)
    with pytest.raises(InputError, match="pointmap has shape"):
        fit_layout(points, truth, mask, pointmap[:-1], k, 1 / GRID)


# ---- the pipeline option ---------------------------------------------------------------------------------------


def _picture(seed: int):
    """A random picture, an elliptic mask, and a pointmap (OpenGL frame) of a bump on a wall 2 m away."""
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2 < 1
    f, depth = 1.2 * w, 2.0 - 0.3 * mask
    pointmap = np.stack([(xx + 0.5 - w / 2) / f * depth, -(yy + 0.5 - h / 2) / f * depth, -depth], -1)
    return image, mask, pointmap.astype(np.float32)


@pytest.fixture(scope="module")
def pipe():
    from engine.pipeline import Pipeline

    return Pipeline.from_source("random", "tiny", device="cpu", seed=3)


def test_the_pipeline_refines_the_layout_when_asked_and_keeps_the_model_pose(pipe):
    image, mask, pointmap = _picture(0)
    second = np.zeros_like(mask)
    second[4:14, 6:22] = True
    stages = []
    kwargs = dict(pointmap=pointmap, seed=5, quality="fast", outputs=("mesh",), postprocess=None)
    plain = pipe.reconstruct(image, [mask, second], **kwargs)
    refined = pipe.reconstruct(image, [mask, second], refine_layout=True, progress=lambda s, f: stages.append(s),
                               **kwargs)  # fmt: skip
    assert "layout" in stages and stages.index("layout") > stages.index("voxels")
    assert "layout.fit" not in plain.objects[0].raw  # the tiny preset leaves it off
    for before, after in zip(plain.objects, refined.objects):
        model = after.raw["layout.pose_model"]
        torch.testing.assert_close(model[4:7], before.pose.translation.float())
        assert model[7].item() == pytest.approx(before.pose.scale)
        iou_before, iou_after, _ = after.raw["layout.fit"].tolist()
        assert not iou_after < iou_before  # kept only if better (NaN: not measured)
        np.testing.assert_allclose(after.object_to_camera, after.pose.object_to_camera().numpy())
        assert after.pose.translation[2] > 0  # still in front of the camera


def test_a_cancel_during_the_layout_step_stops_the_run(pipe):
    image, mask, pointmap = _picture(1)
    cancel = threading.Event()
    seen = []

    def progress(name, fraction):
        seen.append(name)
        if name == "layout":
            cancel.set()

    with pytest.raises(Cancelled):
        pipe.reconstruct(image, [mask], pointmap=pointmap, quality="fast", progress=progress, cancel=cancel,
                         refine_layout=True)  # fmt: skip
    assert "texture" not in seen


def test_the_config_option_defaults_off_and_old_demo_folders_refine(tmp_path):
    from engine.train.demo import demo_config
    from engine.train.export import config_to_dict, open_demo

    assert preset("official").refine_layout is False and demo_config().refine_layout is True
    config = config_to_dict(replace(preset("tiny"), refine_layout=False))
    old = {k: v for k, v in config_to_dict(preset("tiny")).items() if k != "refine_layout"}
    for name, data in (("new", config), ("old", old)):
        folder = tmp_path / name
        folder.mkdir()
        files = {n: f"{n}.safetensors" for n in MODEL_NAMES}
        for file in files.values():
            (folder / file).write_bytes(b"")
        manifest = {"format": "3dfy-demo-weights", "version": 1, "config": data, "files": files}
        (folder / "demo.json").write_text(json.dumps(manifest))
    assert open_demo(tmp_path / "new")[0].refine_layout is False  # written with the field: kept as written
    assert open_demo(tmp_path / "old")[0].refine_layout is True  # written before it: the demo model's default
