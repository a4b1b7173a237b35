"""Camera-frame conventions: one function each way, nothing else converts frames.

- OpenGL / Blender camera (the engine API): +X right, +Y up, looking down -Z.
- PyTorch3D camera (what SAM 3D predicts and consumes): +X left, +Y up, +Z forward.
- OpenCV camera (MoGe's output, most depth estimators): +X right, +Y down, +Z forward.
Pointmaps are (H, W, 3) or (..., 3) arrays/tensors of points; every conversion here is a sign flip of two axes,
so it works on numpy arrays and torch tensors alike and keeps inf/NaN where they are.
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
