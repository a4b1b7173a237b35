"""The bundled demo weights end to end: the real worker 3Dfys the held-out example (a red box and a green sphere,
made by the data engine and never seen in training) on the CPU, and the objects come back box- and sphere-like
and red and green.

Voxel IoU is taken in the object frame on the 64³ grid of the truth (`truth_occupancy.npz`, [x, y, z] in
[-0.5, 0.5]³): the returned mesh's surface is sampled into voxels and its inside filled by casting the six axis
rays from every voxel (inside = blocked by the surface in at least five of them, so a small hole in the mesh
does not empty the object).
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from engine import jobs
from engine.client import EngineClient, EngineConfig
from engine.weights.sources import DEMO_FOLDER
from tests.paths import REPO

EXAMPLE = REPO / "examples" / "red_box_green_sphere"
GRID = 64


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    assert (DEMO_FOLDER / "demo.json").is_file(), f"the demo weights are missing from {DEMO_FOLDER}"
    truth = json.loads((EXAMPLE / "truth.json").read_text())
    camera = json.loads((EXAMPLE / "camera.json").read_text())
    image = np.asarray(Image.open(EXAMPLE / "image.png").convert("RGB"))
    masks = [np.asarray(Image.open(EXAMPLE / o["mask"]).convert("L")) > 127 for o in truth["objects"]]
    k = np.array([[camera["fx"], 0, camera["cx"]], [0, camera["fy"], camera["cy"]], [0, 0, 1]], np.float64)
    folder = jobs.write_job(tmp_path_factory.mktemp("job"), jobs.JobSettings(weights=str(DEMO_FOLDER), preset="demo"),
                            image, masks, pointmap=np.load(EXAMPLE / "pointmap.npy"), intrinsics=k)  # fmt: skip
    client = EngineClient(EngineConfig(python=sys.executable, root=str(REPO), device="cpu", dtype="float32"))
    try:
        client.start()
        client.reconstruct(folder).wait(timeout=1200)
    finally:
        client.stop()
    return truth, jobs.read_result(folder, mask_count=len(masks))


def test_the_demo_model_places_each_object_in_its_colour_with_its_rough_shape(result):
    truth, found = result
    assert sorted(o.mask_index for o in found.objects) == [0, 1]
    for obj in found.objects:
        expected = truth["objects"][obj.mask_index]
        iou = _iou(solid_voxels(obj.mesh.vertices, obj.mesh.faces), _truth(expected["name"]))
        assert iou >= 0.5, f"{expected['name']}: voxel IoU {iou:.2f}"  # the "box-like, sphere-like"

        colour = surface_colour(obj)  # display RGB in [0, 1]
        channel = int(np.argmax(expected["colour"]))  # red box: R, green sphere: G
        assert np.argmax(colour) == channel, f"{expected['name']}: colour {colour.round(2)}"
        assert colour[channel] > 1.5 * np.delete(colour, channel).max(), f"{expected['name']}: {colour.round(2)}"


@pytest.mark.xfail(reason="issue 8 open: the demo model rounds the box (session 5: voxel IoU 0.59 against the box, "
                          "0.82 against the sphere)", strict=False)  # fmt: skip
def test_each_object_is_closer_to_its_own_shape_than_to_the_other(result):
    truth, found = result
    for obj in found.objects:
        expected = truth["objects"][obj.mask_index]
        solid = solid_voxels(obj.mesh.vertices, obj.mesh.faces)
        iou = _iou(solid, _truth(expected["name"]))
        others = [_iou(solid, _truth(o["name"])) for o in truth["objects"] if o is not expected]
        assert iou > max(others), f"{expected['name']}: looks more like another object ({iou:.2f} vs {others})"


def solid_voxels(vertices: np.ndarray, faces: np.ndarray, samples: int = 200_000) -> np.ndarray:
    """(64, 64, 64) bool: the mesh's surface voxels plus the voxels enclosed in >= 5 of the 6 axis directions."""
    rng = np.random.default_rng(0)
    tri = vertices[faces]  # (F, 3, 3)
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick = rng.choice(len(faces), samples, p=area / area.sum())
    a, b = rng.random((2, samples, 1))
    flip = a + b > 1
    a, b = np.where(flip, 1 - a, a), np.where(flip, 1 - b, b)
    points = tri[pick, 0] + a * (tri[pick, 1] - tri[pick, 0]) + b * (tri[pick, 2] - tri[pick, 0])
    cells = np.clip(np.floor((points + 0.5) * GRID).astype(int), 0, GRID - 1)
    surface = np.zeros((GRID,) * 3, bool)
    surface[cells[:, 0], cells[:, 1], cells[:, 2]] = True
    blocked = np.zeros((GRID,) * 3, np.int8)
    for axis in range(3):
        blocked += np.maximum.accumulate(surface, axis=axis)  # a surface voxel lies before, along +axis
        blocked += np.flip(np.maximum.accumulate(np.flip(surface, axis), axis=axis), axis)  # ... and after
    return surface | (blocked >= 5)


def surface_colour(obj: jobs.ResultObject) -> np.ndarray:
    """Median display RGB of the object's surface: its texture at the vertices' UVs, else its vertex colours."""
    if obj.texture_path is not None:
        texture = np.asarray(Image.open(obj.texture_path).convert("RGB")).astype(np.float32) / 255
        h, w = texture.shape[:2]
        uv = obj.mesh.uvs
        x = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
        y = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)  # UV v up, image rows down
        return np.median(texture[y, x], axis=0)
    assert obj.mesh.vertex_colors is not None, "the object has neither texture nor vertex colours"
    return np.median(obj.mesh.vertex_colors, axis=0)


def _truth(name: str) -> np.ndarray:
    return np.load(EXAMPLE / "truth_occupancy.npz")[f"{name}_solid"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))
