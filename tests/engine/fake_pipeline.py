"""A stand-in for the pipeline, for worker, client and Blender tests that exercise the bridge, not the model.

Selected in the worker with THREEDFY_PIPELINE_FACTORY=tests.engine.fake_pipeline:create (the repository root on
PYTHONPATH). No torch. The weights source picks the behaviour:

    fake           per mask a textured quad, posed so that it projects exactly onto the mask's bounding box
                   through the intrinsics (default: f = 1.2 max(W, H), centred principal point), 2 m away
    fake:vertex    the same with vertex colours and no texture
    fake:slow      the same, after 40 progress steps of 0.05 s; honours cancel between steps
    fake:chatty    the same, printing to sys.stdout and writing to file descriptor 1, as careless libraries do
    fake:stubborn  never checks cancel (sleeps 30 s in 'geometry'), for the SIGINT / kill escalation
    fake:oom       raises the engine's OutOfMemoryError in 'texture'
    fake:crash     the process kills itself (SIGKILL) in 'geometry', as a driver fault would
    fake:bug       raises ValueError in 'geometry' (an unexpected failure)
    fake:missing   raises WeightsError while loading, as a missing weights folder does
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from engine.assets import Gaussians, Mesh
from engine.errors import Cancelled, InputError, OutOfMemoryError, WeightsError

DEPTH = 2.0  # metres from the camera to the quad


@dataclass
class FakeObject:
    mask_index: int
    mesh: Mesh
    object_to_camera: np.ndarray
    gaussians: Gaussians | None = None


@dataclass
class FakeResult:
    objects: list[FakeObject] = field(default_factory=list)
    intrinsics: np.ndarray | None = None  # the pinhole the quads were placed with, as the pipeline reports it
    image_size: tuple[int, int] = (0, 0)
    pointmap_source: str = "estimated"


def create(weights: str, preset: str = "official", device: str = "auto", dtype: str = "auto",
           keep_loaded: bool = True, progress=None) -> FakePipeline:
    mode = weights.partition(":")[2] or "plain"
    if not weights.startswith("fake"):
        raise WeightsError(f"the fake pipeline takes weights 'fake[:mode]', got {weights!r}")
    if mode == "missing":
        raise WeightsError("Weights folder '/nonexistent/sam-3d-objects' has no pipeline.yaml",
                           "choose the folder of the downloaded release, or use Hugging Face")
    return FakePipeline(mode)


class FakePipeline:
    weights_id = "fake-weights"

    def __init__(self, mode: str):
        self.mode = mode

    def reconstruct(self, image, masks, pointmap=None, intrinsics=None, seed=0, quality="default",
                    outputs=("mesh", "gaussians"), progress=None, cancel=None) -> FakeResult:
        report = progress or (lambda stage, fraction: None)
        h, w = image.shape[:2]
        k = np.asarray(intrinsics, np.float64) if intrinsics is not None else default_intrinsics(w, h)
        boxes = []
        for i, mask in enumerate(masks):
            rows, cols = np.nonzero(np.asarray(mask) > 0.5)
            if rows.size == 0:
                raise InputError(f"mask {i + 1} is empty (no pixel above 0.5)", "draw or select the object first")
            boxes.append((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))  # pixel edges
        if self.mode == "chatty":
            print("a library prints to stdout", flush=True)
            os.write(1, b"and C code writes to file descriptor 1\n")
        report("condition", 1.0)
        steps = 40 if self.mode == "slow" else 4
        for step in range(steps):
            if cancel is not None and cancel.is_set() and self.mode != "stubborn":
                raise Cancelled("reconstruction cancelled")
            if self.mode == "slow":
                time.sleep(0.05)
            report("geometry", (step + 1) / steps)
            if self.mode == "crash" and step == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.mode == "bug":
                raise ValueError("index 7 is out of bounds for axis 0 with size 3")
            if self.mode == "stubborn":
                time.sleep(30)
        report("texture", 0.5)
        if self.mode == "oom":
            raise OutOfMemoryError("the cuda:0 device ran out of memory in stage 2 (needed 2.1 GiB, 0.3 GiB free)",
                                   "use quality 'fast', fewer objects per run, or precision float16")
        rng = np.random.default_rng(seed)
        objects = []
        for index, box in enumerate(boxes):
            mesh, pose = plate(box, k, textured=self.mode != "vertex", rng=rng)
            gaussians = None
            if "gaussians" in outputs:
                n = len(mesh.vertices)
                gaussians = Gaussians(mesh.vertices.copy(), np.full((n, 3), 0.5, np.float32),
                                      np.full((n, 3), 0.01, np.float32), np.tile([1, 0, 0, 0], (n, 1)).astype(np.float32),
                                      np.full(n, 0.9, np.float32))
            objects.append(FakeObject(index, mesh, pose, gaussians))
        report("mesh", 1.0)
        return FakeResult(objects, k, (w, h), "estimated" if pointmap is None else "given")


def default_intrinsics(width: int, height: int) -> np.ndarray:
    f = 1.2 * max(width, height)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float64)


def plate(box, k: np.ndarray, textured: bool, rng) -> tuple[Mesh, np.ndarray]:
    """A quad in the object-local frame (z-up, inside [-0.5, 0.5]^3, in the x-z plane, facing -y) and the
    object_to_camera that puts it exactly on the pixel rectangle `box` = (u0, v0, u1, v1), DEPTH metres away."""
    u0, v0, u1, v1 = (float(b) for b in box)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    width_m = (u1 - u0) / fx * DEPTH
    height_m = (v1 - v0) / fy * DEPTH
    scale = max(width_m, height_m)
    a, b = width_m / scale, height_m / scale
    vertices = np.array([[-a / 2, 0, -b / 2], [a / 2, 0, -b / 2], [a / 2, 0, b / 2], [-a / 2, 0, b / 2]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)  # counter-clockwise seen from -y (the front)
    # Local x -> camera +X, local z (up) -> camera +Y, local -y (front) -> camera +Z (towards the camera).
    rotation = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], np.float64)
    pose = np.eye(4)
    pose[:3, :3] = rotation * scale
    pose[:3, 3] = [((u0 + u1) / 2 - cx) / fx * DEPTH, -((v0 + v1) / 2 - cy) / fy * DEPTH, -DEPTH]
    uvs = np.stack([vertices[:, 0] / a + 0.5, vertices[:, 2] / b + 0.5], axis=1).astype(np.float32)
    colors = np.clip(uvs[:, [0, 1, 0]] * 0.8 + rng.random(3) * 0.2, 0, 1).astype(np.float32)
    texture = None
    if textured:
        yy, xx = np.mgrid[0:32, 0:32]
        checker = ((yy // 8 + xx // 8) % 2).astype(np.uint8)
        texture = np.stack([checker * 200 + 40, yy * 7, xx * 7], axis=-1).astype(np.uint8)
    mesh = Mesh(vertices, faces, vertex_colors=colors, uvs=uvs if textured else None, texture=texture)
    return mesh, pose
