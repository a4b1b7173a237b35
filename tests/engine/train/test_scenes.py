"""Random scenes: objects rest on the ground without overlapping, inside the view of a level camera."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.train.scenes import SceneBatch, SceneConfig, look_at, random_scene
from engine.train.targets import voxel_centres, canonical_sdf


@pytest.fixture(scope="module")
def scenes():
    return SceneBatch.collate([random_scene(np.random.default_rng([9, i])) for i in range(8)], dtype=torch.float64)


def test_objects_rest_on_the_ground(scenes):
    centres = voxel_centres(32, torch.float64).reshape(-1, 3)
    inside = canonical_sdf(scenes, centres) <= 0  # (B, K, N)
    for b, scene in enumerate(scenes.scenes):
        for k, obj in enumerate(scene.objects):
            world = obj.scale * centres[inside[b, k]] @ torch.as_tensor(obj.rotation()).T
            world = world + torch.tensor(obj.position, dtype=torch.float64)
            cell = obj.scale / 32
            assert world[:, 2].min() == pytest.approx(0.0, abs=cell), (b, k, obj.shape.name)
            assert world[:, 2].min() >= 0.0


def test_objects_footprints_do_not_overlap(scenes):
    config = SceneConfig()
    for scene in scenes.scenes:
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                # footprint circle: half the diagonal of the horizontal sides before the yaw
                reach = sum(
                    0.5 * o.scale * np.hypot(o.shape.extent[0], o.shape.extent[2 if o.lying else 1])
                    for o in (a, b)
                )
                assert np.hypot(*(np.subtract(a.position[:2], b.position[:2]))) >= reach + config.gap - 1e-9


def test_every_object_centre_is_in_front_of_the_camera_and_inside_the_image(scenes):
    k = scenes.intrinsics(100, 100)
    for b, scene in enumerate(scenes.scenes):
        world_to_cam = np.linalg.inv(scene.camera.matrix())
        assert scene.camera.matrix()[2, 3] > 0  # above the ground
        for obj in scene.objects:
            x, y, z = world_to_cam[:3, :3] @ obj.position + world_to_cam[:3, 3]
            assert z < 0
            u, v = k[b, 0, 0] * x / -z + k[b, 0, 2], k[b, 1, 1] * -y / -z + k[b, 1, 2]
            assert 0 < u < 100 and 0 < v < 100


def test_look_at_is_a_level_right_handed_opengl_camera():
    eye, target = np.array([3.0, -2.0, 1.5]), np.array([0.2, 0.1, 0.3])
    m = look_at(eye, target)
    rot = m[:3, :3]
    assert np.allclose(rot @ rot.T, np.eye(3)) and np.linalg.det(rot) == pytest.approx(1.0)
    forward = (target - eye) / np.linalg.norm(target - eye)
    assert np.allclose(-rot[:, 2], forward)  # looking down -Z
    assert rot[2, 0] == pytest.approx(0.0) and rot[2, 1] > 0  # X level, Y up
    assert np.allclose(m[:3, 3], eye)


def test_requested_shapes_and_colours_are_used():
    red, green = (0.8, 0.1, 0.1), (0.1, 0.7, 0.15)
    scene = random_scene(np.random.default_rng(0), shapes=["box", "sphere"], colours=[(red,), (green,)])
    assert [o.shape.name for o in scene.objects] == ["box", "sphere"]
    assert [o.colours for o in scene.objects] == [(red, red), (green, green)]
    with pytest.raises(ValueError, match="unknown shapes"):
        random_scene(np.random.default_rng(0), shapes=["teapot"])


def test_collate_pads_objects_and_parts_and_places_parts_in_the_world():
    a = random_scene(np.random.default_rng(1), shapes=["union"])
    b = random_scene(np.random.default_rng(2), shapes=["sphere", "box", "cone"])
    batch = SceneBatch.collate([a, b], dtype=torch.float64)
    assert batch.part_object.tolist() == [[0, 0, -1], [0, 1, 2]]
    assert batch.object_valid.tolist() == [[True, False, False], [True, True, True]]
    assert (batch.part_bounding_radius()[0, 2] < 0) and (batch.part_bounding_radius()[1] > 0).all()
    rot, pos, scale = batch.part_world()
    obj = a.objects[0]
    for p, part in enumerate(obj.shape.parts):
        expected = obj.scale * obj.rotation() @ np.asarray(part.offset) + np.asarray(obj.position)
        assert np.allclose(pos[0, p].numpy(), expected)
        assert np.allclose(rot[0, p].numpy(), obj.rotation() @ np.asarray(part.rotation).reshape(3, 3))
    assert scale[1].tolist() == [o.scale for o in b.objects]


def test_symmetric_objects_get_the_yaw_that_faces_the_camera():
    config = SceneConfig(lying_probability=0.0)
    for seed in range(6):
        scene = random_scene(np.random.default_rng(seed), config, shapes=["cylinder", "box", "torus"])
        eye = scene.camera.matrix()[:3, 3]
        for obj in scene.objects:
            to_eye = (eye - np.asarray(obj.position))[:2]
            x_axis = obj.rotation()[:2, 0]
            cosine = x_axis @ to_eye / np.linalg.norm(to_eye)
            if obj.shape.name == "box":
                assert cosine >= 0
            else:
                assert cosine == pytest.approx(1.0)
