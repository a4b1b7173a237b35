"""The renderer: pointmap on the posed surfaces and the ground, albedo = object colours, intrinsics consistent."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from engine.frames import opengl_to_p3d
from engine.train.dataset import DataConfig, SyntheticData
from engine.train.render import GROUND, SKY, main, render
from engine.train.scenes import Camera, SceneBatch, SceneConfig, look_at, random_scene
from engine.train.targets import canonical_albedo, canonical_sdf


@pytest.fixture(scope="module")
def batch():
    config = DataConfig(height=48, width=64, resolution=16, scene=SceneConfig(two_colour_probability=0.5))
    return SyntheticData(seed=3, split="train", config=config).batch(range(6))


def _object_pixels(batch, b, k):
    """Canonical coordinates of the pointmap at object k's pixels, and those pixels' albedo."""
    mask = batch.views.instance[b] == k
    p3d = opengl_to_p3d(batch.views.pointmap[b][mask])  # (n, 3)
    pose = batch.targets.pose(b, k)
    local = ((p3d - pose.translation) / pose.scale) @ pose.rotation_matrix.T  # inverse of s * (p @ R) + t
    return local, batch.views.albedo[b][mask]


def test_pointmap_at_masked_pixels_lies_on_the_posed_object_surface(batch):
    checked = 0
    for b in range(len(batch.indices)):
        for k in range(int(batch.targets.valid[b].sum())):
            local, _ = _object_pixels(batch, b, k)
            if len(local) == 0:
                continue
            sdf = canonical_sdf(batch.scenes, local)[b, k]
            assert sdf.abs().max() < 1 / 64, (b, k, float(sdf.abs().max()))
            checked += len(local)
    assert checked > 500


def test_albedo_at_masked_pixels_is_the_object_colour_of_that_surface_point(batch):
    two_coloured = 0
    for b in range(len(batch.indices)):
        for k in range(int(batch.targets.valid[b].sum())):
            local, albedo = _object_pixels(batch, b, k)
            if len(local) == 0:
                continue
            slots = batch.targets.colours[b, k]  # (2, 3)
            is_slot = (albedo[:, None, :] == slots[None]).all(-1)  # (n, 2)
            assert is_slot.any(-1).all()
            expected = canonical_albedo(batch.scenes, local)[b, k]
            assert (expected == albedo).all(-1).float().mean() > 0.98
            two_coloured += bool(is_slot[:, 0].any() and is_slot[:, 1].any() and not torch.equal(slots[0], slots[1]))
    assert two_coloured >= 1


def test_ground_pixels_lie_on_the_ground_plane_and_sky_is_infinite(batch):
    views = batch.views
    ground = views.instance == GROUND
    homog = torch.cat([views.pointmap, torch.ones_like(views.pointmap[..., :1])], -1)  # (B, H, W, 4)
    world = torch.einsum("bij,bhwj->bhwi", views.camera_to_world, torch.where(ground[..., None], homog, 0.0))
    assert ground.sum() > 1000
    assert world[..., 2][ground].abs().max() < 1e-4
    sky = views.instance == SKY
    assert sky.any()
    assert torch.isinf(views.pointmap[sky]).all() and torch.isinf(views.depth[sky]).all()
    assert torch.isfinite(views.pointmap[~sky]).all() and (views.depth[~sky] > 0).all()
    assert torch.equal(views.depth[~sky], -views.pointmap[..., 2][~sky])


def test_pointmap_projects_back_through_the_intrinsics_to_its_pixel(batch):
    views = batch.views
    num_b, height, width = views.instance.shape
    finite = torch.isfinite(views.depth)
    x, y, z = views.pointmap.unbind(-1)
    k = views.intrinsics
    u = k[:, 0, 0, None, None] * x / -z + k[:, 0, 2, None, None]  # OpenCV: (x, -y, -z)
    v = k[:, 1, 1, None, None] * -y / -z + k[:, 1, 2, None, None]
    cols = torch.arange(width).float() + 0.5
    rows = torch.arange(height).float() + 0.5
    assert (u - cols)[finite].abs().max() < 1e-3
    assert (v - rows[:, None])[finite].abs().max() < 1e-3
    assert torch.allclose(k[:, 0, 2], torch.full((num_b,), width / 2))
    assert torch.allclose(k[:, 1, 2], torch.full((num_b,), height / 2))


def test_image_is_albedo_under_ambient_plus_lambert_shading(batch):
    views = batch.views
    lit = views.instance != SKY
    ratio = views.image[lit] / views.albedo[lit].clamp_min(1e-6)
    ambient = batch.scenes.ambient.min()
    ok = views.albedo[lit] > 0.05
    assert (ratio[ok] >= ambient - 1e-4).all() and (ratio[ok] <= 1 + 1e-4).all()
    assert torch.equal(views.image[~lit], views.albedo[~lit])
    assert views.image.min() >= 0 and views.image.max() <= 1


def test_a_sphere_seen_head_on_renders_as_a_disc_of_the_right_radius():
    scene = random_scene(np.random.default_rng(0), shapes=["sphere"], colours=[((0.2, 0.4, 0.6),)])
    obj = scene.objects[0]
    centre = np.asarray(obj.position)
    eye = centre + np.array([0.0, -3.0 * obj.scale, 0.0])
    camera = Camera(tuple(look_at(eye, centre).reshape(-1)), math.radians(40))
    views = render(SceneBatch.collate([dataclasses.replace(scene, camera=camera)]), 101, 101)
    mask = views.instance[0] == 0
    f = float(views.intrinsics[0, 0, 0])
    radius_px = f * math.tan(math.asin(1 / 6))  # the silhouette cone of a sphere of radius scale/2 at 3 scale
    assert radius_px > 20
    assert mask.sum().item() == pytest.approx(math.pi * radius_px**2, rel=0.01)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert rows.float().mean().item() == pytest.approx(50.0, abs=0.05)
    assert cols.float().mean().item() == pytest.approx(50.0, abs=0.05)
    assert (views.albedo[0][mask] == torch.tensor([0.2, 0.4, 0.6])).all()


def test_benchmark_prints_views_per_second(capsys):
    main(["--bench", "--size", "16", "--batch", "2", "--repeats", "1", "--device", "cpu"])
    assert "views/s" in capsys.readouterr().out
