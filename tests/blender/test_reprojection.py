"""The frame chain: a known result placed by the scene layer projects, through Blender's own camera code, onto
the mask that the same result makes through a textbook pinhole in the camera frame (IoU >= 0.98).

Cases are folders `cases/NN_name/case.json`: the camera (location, rotation, lens, lens shift, object scale), the
object (shape, rotations, translation, uniform scale in the Blender/OpenGL camera frame) and whether the origin
goes to its base. The mask is computed without Blender; the silhouette without the extension's projection code.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import bpy
import numpy as np
import pytest
from mathutils import Matrix

from tests.blender.support import HEIGHT, WIDTH, add_camera, camera_intrinsics, iou, rasterize, silhouette
from tests.engine.fake_pipeline import Mesh

CASES = sorted(p for p in (Path(__file__).parent / "cases").iterdir() if (p / "case.json").is_file())


def _shape(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name in ("cube", "flat_box"):
        height = 0.3 if name == "flat_box" else 1.0
        v = np.array([[x, y, z * height] for z in (-0.5, 0.5) for y in (-0.5, 0.5) for x in (-0.5, 0.5)])
        f = [[0, 2, 3], [0, 3, 1], [4, 5, 7], [4, 7, 6], [0, 1, 5], [0, 5, 4],
             [2, 6, 7], [2, 7, 3], [0, 4, 6], [0, 6, 2], [1, 3, 7], [1, 7, 5]]
    elif name == "tetrahedron":
        v = np.array([[0.5, 0.5, 0.5], [0.5, -0.5, -0.5], [-0.5, 0.5, -0.5], [-0.5, -0.5, 0.5]])
        f = [[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]
    else:
        raise ValueError(name)
    return v.astype(np.float32), np.array(f, np.int32)


def _object_to_camera(spec: dict) -> np.ndarray:
    rotation = Matrix.Identity(4)
    for axis, degrees in spec["rotations_deg"]:
        rotation = Matrix.Rotation(math.radians(degrees), 4, axis) @ rotation
    return np.array(Matrix.Translation(spec["translation"]) @ rotation @ Matrix.Scale(spec["scale"], 4))


def _pinhole_mask(vertices: np.ndarray, faces: np.ndarray, object_to_camera: np.ndarray, k: np.ndarray):
    p = vertices @ object_to_camera[:3, :3].T + object_to_camera[:3, 3]  # camera frame: +X right, +Y up, -Z ahead
    assert (p[:, 2] < 0).all(), "the case's object must be in front of the camera"
    u = k[0, 0] * p[:, 0] / -p[:, 2] + k[0, 2]
    v = k[1, 2] - k[1, 1] * p[:, 1] / -p[:, 2]
    return rasterize(np.stack([u, v], axis=1)[faces], WIDTH, HEIGHT)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_placed_result_reprojects_onto_its_mask(threedfy, case, tmp_path):
    spec = json.loads((case / "case.json").read_text())
    cam = spec["camera"]
    camera = add_camera(cam["location"], cam["rotation_deg"], cam["lens"], tuple(cam["shift"]), cam["scale"])
    vertices, faces = _shape(spec["object"]["shape"])
    pose = _object_to_camera(spec["object"])
    mask = _pinhole_mask(vertices, faces, pose, camera_intrinsics(camera))
    assert 20 < mask.sum() < 0.8 * mask.size, "the case must show the object, not fill or miss the picture"

    jobs = threedfy.submodule("engine.jobs")
    jobs.write_result(tmp_path, [SimpleNamespace(mesh=Mesh(vertices, faces), object_to_camera=pose, mask_index=0,
                                                 gaussians=None)])
    build = threedfy.submodule("scene.build")
    placement = threedfy.submodule("scene.placement")
    _, (obj,) = build.create_objects(
        bpy.context.scene, jobs.read_result(tmp_path), names=["Object"], mask_hashes=["-"],
        camera_matrix=placement.camera_to_world(camera), origin_at_base=spec["origin_at_base"],
        provenance=build.Provenance(seed=0, quality="default", source_image="", weights="", weights_revision=""))
    assert iou(silhouette(obj, camera), mask) >= 0.98
