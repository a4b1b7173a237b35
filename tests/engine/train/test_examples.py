"""The bundled example (scripts/make_examples.py) is self-consistent: truth pose x truth occupancy -> masks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.frames import opengl_to_p3d, p3d_to_opencv
from engine.pose import Pose
from engine.train.targets import voxel_centres

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "red_box_green_sphere"


@pytest.fixture(scope="module")
def example():
    camera = json.loads((EXAMPLE / "camera.json").read_text())
    truth = json.loads((EXAMPLE / "truth.json").read_text())
    image = np.asarray(Image.open(EXAMPLE / "image.png"))
    masks = {o["name"]: np.asarray(Image.open(EXAMPLE / o["mask"])) > 0 for o in truth["objects"]}
    pointmap = np.load(EXAMPLE / "pointmap.npy")
    occupancy = dict(np.load(EXAMPLE / "truth_occupancy.npz"))
    return camera, truth, image, masks, pointmap, occupancy


def _pose(obj) -> Pose:
    p = obj["pose"]
    return Pose(torch.tensor(p["rotation_wxyz"]), torch.tensor(p["translation"]), p["scale"])


def test_files_have_the_documented_formats(example):
    camera, truth, image, masks, pointmap, occupancy = example
    h, w = camera["height"], camera["width"]
    assert image.shape == (h, w, 3) and image.dtype == np.uint8
    assert pointmap.shape == (h, w, 3) and pointmap.dtype == np.float32
    assert [o["shape"] for o in truth["objects"]] == ["box", "sphere"]
    for o in truth["objects"]:
        mask = masks[o["name"]]
        assert mask.shape == (h, w) and mask.sum() == o["visible_pixels"] > 500
        assert np.isfinite(pointmap[mask]).all() and (pointmap[mask][:, 2] < 0).all()  # in front: -Z
        assert occupancy[f"{o['name']}_solid"].shape == (64, 64, 64)
    assert not (masks["red_box"] & masks["green_sphere"]).any()


def test_truth_pose_projects_the_truth_occupancy_onto_the_masks(example):
    camera, truth, _, masks, _, occupancy = example
    h, w = camera["height"], camera["width"]
    for o in truth["objects"]:
        solid = torch.from_numpy(occupancy[f"{o['name']}_solid"])
        cv = p3d_to_opencv(_pose(o).transform_points(voxel_centres(64)[solid]))
        u = (camera["fx"] * cv[:, 0] / cv[:, 2] + camera["cx"]).long()
        v = (camera["fy"] * cv[:, 1] / cv[:, 2] + camera["cy"]).long()
        projected = np.zeros((h, w), dtype=bool)
        projected[v.numpy(), u.numpy()] = True
        mask = masks[o["name"]]
        assert (projected & mask).sum() / (projected | mask).sum() >= 0.9, o["name"]


def test_pointmap_and_colours_at_the_masks_belong_to_the_objects(example):
    _, truth, image, masks, pointmap, _ = example
    for o in truth["objects"]:
        mask = masks[o["name"]]
        pose = _pose(o)
        p3d = opengl_to_p3d(torch.from_numpy(pointmap[mask]))
        local = ((p3d - pose.translation) / pose.scale) @ pose.rotation_matrix.T
        half = torch.tensor(o["extent"]) / 2
        assert (local.abs() <= half + 0.01).all(), o["name"]
        mean = image[mask].mean(0)
        channel = {"red_box": 0, "green_sphere": 1}[o["name"]]
        assert mean.argmax() == channel and mean[channel] > 1.5 * np.delete(mean, channel).max()
        m = torch.tensor(o["object_to_camera"], dtype=torch.float64)
        homog = torch.cat([local.double(), torch.ones(len(local), 1, dtype=torch.float64)], 1)
        assert torch.allclose((homog @ m.T)[:, :3], torch.from_numpy(pointmap[mask]).double(), atol=1e-4)
