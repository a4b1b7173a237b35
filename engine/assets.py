"""What the engine hands out: meshes and Gaussians as plain numpy arrays, in the object-local frame.

Object-local frame: z-up, the object inside [-0.5, 0.5]^3 (the model's own). Placement in the camera frame is a
separate 4x4 `object_to_camera` (Blender/OpenGL camera: +X right, +Y up, looking down -Z), see `pose.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Mesh:
    vertices: np.ndarray  # (V, 3) float32, object-local
    faces: np.ndarray  # (F, 3) int32, counter-clockwise seen from outside
    vertex_colors: np.ndarray | None = None  # (V, 3) float32 in [0, 1], display (sRGB) values as the decoder gives
    uvs: np.ndarray | None = None  # (V, 2) float32 in [0, 1], origin bottom-left (glTF flips on export)
    texture: np.ndarray | None = None  # (H, W, 3) uint8 base colour, row 0 = top of the image

    def __post_init__(self) -> None:
        assert self.vertices.ndim == 2 and self.vertices.shape[1] == 3, self.vertices.shape
        assert self.faces.ndim == 2 and self.faces.shape[1] == 3, self.faces.shape


@dataclass
class Gaussians:
    """3D Gaussians with activated attributes (what a renderer uses), object-local frame."""

    xyz: np.ndarray  # (N, 3) float32 centres
    colors: np.ndarray  # (N, 3) float32 RGB = 0.28209479 * f_dc + 0.5 (SH degree 0)
    scaling: np.ndarray  # (N, 3) float32 standard deviations (activated, > 0)
    rotation: np.ndarray  # (N, 4) float32 quaternion (w, x, y, z), as stored (raw + [1,0,0,0]; normalise to use)
    opacity: np.ndarray  # (N,) float32 in (0, 1)

    def __len__(self) -> int:
        return int(self.xyz.shape[0])
