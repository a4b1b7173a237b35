"""Camera-frame conventions: one function each way, nothing else converts frames.

- OpenGL / Blender camera (the engine API): +X right, +Y up, looking down -Z.
- PyTorch3D camera (what SAM 3D predicts and consumes): +X left, +Y up, +Z forward.
- OpenCV camera (MoGe's output, most depth estimators): +X right, +Y down, +Z forward.
- Object-local (engine meshes and Gaussians): z-up, the object in [-0.5, 0.5]^3. glTF and OBJ are y-up with the
  front facing +Z: (x, y, z) -> (x, z, -y), the turn upstream SAM 3D applies before writing a GLB; Blender's
  glTF and OBJ importers undo it, so an object comes back z-up exactly. Gaussian PLY files stay z-up.
Pointmaps are (H, W, 3) or (..., 3) arrays/tensors of points; every conversion here is a sign flip or a swap of
axes, so it works on numpy arrays and torch tensors alike and keeps inf/NaN where they are.
"""
from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")  # np.ndarray or torch.Tensor


def _flip(points: T, sx: float, sy: float, sz: float) -> T:
    out = points * 1.0  # a copy in a float dtype, for numpy and torch alike
    out[..., 0] *= sx
    out[..., 1] *= sy
    out[..., 2] *= sz
    return out


def opengl_to_p3d(points: T) -> T:
    return _flip(points, -1.0, 1.0, -1.0)


def p3d_to_opengl(points: T) -> T:
    return _flip(points, -1.0, 1.0, -1.0)


def opencv_to_p3d(points: T) -> T:
    return _flip(points, -1.0, -1.0, 1.0)


def p3d_to_opencv(points: T) -> T:
    return _flip(points, -1.0, -1.0, 1.0)


def object_to_gltf(points: T) -> T:
    """(N, 3) points or directions, object-local z-up -> glTF/OBJ y-up: (x, z, -y)."""
    out = points * 1.0
    out[..., 1], out[..., 2] = points[..., 2] * 1.0, points[..., 1] * -1.0
    return out


def gltf_to_object(points: T) -> T:
    """Inverse of `object_to_gltf`: (x, y, z) y-up -> (x, -z, y) z-up."""
    out = points * 1.0
    out[..., 1], out[..., 2] = points[..., 2] * -1.0, points[..., 1] * 1.0
    return out
