"""Ground truth agrees with the renderer: posed occupancy projects onto the masks; poses follow engine.pose."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.frames import opengl_to_p3d, p3d_to_opencv
from engine.occupancy import keep_surface
from engine.pose import quaternion_to_matrix
from engine.train.dataset import DataConfig, SyntheticData
from engine.train.scenes import SceneBatch, SceneConfig, random_scene
from engine.train.targets import canonical_albedo, canonical_sdf, object_poses, object_targets, voxel_centres


@pytest.fixture(scope="module")
def single():
    """Scenes of one object each (no occlusion), 64 px, 64^3 targets."""
    config = DataConfig(height=64, width=64, resolution=64, scene=SceneConfig(objects=(1, 1)))
    return SyntheticData(seed=11, split="test", config=config).batch(range(7))


def _project(points_p3d: torch.Tensor, k: torch.Tensor, height: int, width: int) -> torch.Tensor:
    cv = p3d_to_opencv(points_p3d)
    u = k[0, 0] * cv[:, 0] / cv[:, 2] + k[0, 2]
    v = k[1, 1] * cv[:, 1] / cv[:, 2] + k[1, 2]
    ok = (cv[:, 2] > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[v[ok].long(), u[ok].long()] = True
    return mask


def test_projected_posed_occupancy_covers_the_mask_with_iou_above_0_9(single):
    names, ious = [], []
    centres = voxel_centres(64)
    masks = single.masks
    for b in range(len(single.indices)):
        pose = single.targets.pose(b, 0)
        points = pose.transform_points(centres[single.targets.solid[b, 0]])
        projected = _project(points, single.views.intrinsics[b], 64, 64)
        mask = masks[b, 0]
        ious.append(float((projected & mask).sum() / (projected | mask).sum()))
        names.append(single.targets.names[b][0])
    assert min(ious) >= 0.9, list(zip(names, ious))


def test_a_wrong_pose_would_fail_the_projection_check(single):
    pose = single.targets.pose(0, 0)
    pose.translation = pose.translation + torch.tensor([0.1, 0.0, 0.0]) * pose.scale
    points = pose.transform_points(voxel_centres(64)[single.targets.solid[0, 0]])
    projected = _project(points, single.views.intrinsics[0], 64, 64)
    mask = single.masks[0, 0]
    assert float((projected & mask).sum() / (projected | mask).sum()) < 0.9


def test_occupancy_is_the_surface_shell_that_keep_surface_leaves_unchanged(single):
    occ, solid = single.targets.occupancy[:3, 0], single.targets.solid[:3, 0]  # (3, R, R, R)
    assert (occ <= solid).all() and occ.sum() < solid.sum()
    coords = torch.nonzero(solid).to(torch.int32)
    assert torch.equal(keep_surface(coords), torch.nonzero(occ).to(torch.int32))
    assert solid.dtype == torch.bool and solid.shape[1:] == (64, 64, 64)


def test_pose_is_the_world_placement_seen_from_the_model_camera():
    scenes = SceneBatch.collate([random_scene(np.random.default_rng(s)) for s in range(3)], dtype=torch.float64)
    quat, rot, trans = object_poses(scenes)
    g = torch.Generator().manual_seed(0)
    local = torch.rand(20, 3, generator=g, dtype=torch.float64) - 0.5
    for b, scene in enumerate(scenes.scenes):
        world_to_cam = torch.linalg.inv(scenes.camera_to_world[b])
        for k, obj in enumerate(scene.objects):
            position = torch.tensor(obj.position, dtype=torch.float64)
            world = obj.scale * local @ torch.as_tensor(obj.rotation()).T + position
            cam_gl = world @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
            expected = opengl_to_p3d(cam_gl)
            placed = obj.scale * (local @ quaternion_to_matrix(quat[b, k])) + trans[b, k]
            assert torch.allclose(placed, expected, atol=1e-9)
            assert torch.allclose(rot[b, k], quaternion_to_matrix(quat[b, k]), atol=1e-9)
            assert quat[b, k, 0] >= 0 and torch.isclose(quat[b, k].norm(), torch.tensor(1.0, dtype=torch.float64))
            assert torch.det(rot[b, k]) == pytest.approx(1.0)


def test_targets_of_padding_objects_are_empty_and_invalid():
    scenes = SceneBatch.collate(
        [
            random_scene(np.random.default_rng(1), shapes=["sphere"]),
            random_scene(np.random.default_rng(2), shapes=["box", "torus"]),
        ]
    )
    t = object_targets(scenes, resolution=16)
    assert t.valid.tolist() == [[True, False], [True, True]]
    assert not t.solid[0, 1].any() and t.solid[0, 0].any() and t.solid[1].flatten(1).any(1).all()
    assert t.names == [["sphere"], ["box", "torus"]]
    assert torch.isinf(canonical_sdf(scenes, torch.zeros(4, 3))[0, 1]).all()


def test_canonical_albedo_follows_each_part_colour_rule():
    colours = [((1.0, 0.0, 0.0), (0.0, 0.0, 1.0))]
    scene = random_scene(np.random.default_rng(5), SceneConfig(two_colour_probability=1.0), ["sphere"], colours)
    scenes = SceneBatch.collate([scene])
    split = scene.objects[0].shape.parts[0].split
    pts = torch.tensor([[0.0, 0.0, -0.5], [0.0, 0.0, 0.5], [0.5, 0.0, split - 0.01], [0.5, 0.0, split + 0.01]])
    albedo = canonical_albedo(scenes, pts)[0, 0]
    assert albedo.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert scenes.object_colours[0, 0].tolist() == [list(c) for c in colours[0]]
