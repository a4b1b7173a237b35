"""Pinhole intrinsics in pixels: K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], x right, y down, origin at the image's
top-left corner (pixel centres at +0.5). What Blender's camera needs to match the picture.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .frames import p3d_to_opencv


def check(intrinsics: np.ndarray | list | tuple, width: int, height: int) -> np.ndarray:
    """(3, 3) matrix or (fx, fy, cx, cy) -> validated (3, 3) float64."""
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.shape == (4,):
        fx, fy, cx, cy = k
        k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
    if k.shape != (3, 3) or not np.isfinite(k).all():
        raise InputError(f"intrinsics must be a 3x3 matrix or fx,fy,cx,cy in pixels, got shape {k.shape}")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise InputError(f"intrinsics need positive focal lengths in pixels, got fx={k[0, 0]}, fy={k[1, 1]}")
    if not (0 <= k[0, 2] <= width and 0 <= k[1, 2] <= height):
        raise InputError(
            f"principal point ({k[0, 2]}, {k[1, 2]}) lies outside the {width}x{height} image; "
            "intrinsics are in pixels of this image"
        )
    return k


def from_pointmap(points_p3d: np.ndarray) -> np.ndarray:
    """Least-squares pinhole intrinsics that best project the (H, W, 3) points (PyTorch3D frame) onto their pixels."""
    h, w, _ = points_p3d.shape
    p = p3d_to_opencv(points_p3d.astype(np.float64)).reshape(-1, 3)
    v, u = np.mgrid[0:h, 0:w]
    u = u.reshape(-1) + 0.5
    v = v.reshape(-1) + 0.5
    ok = np.isfinite(p).all(axis=1) & (p[:, 2] > 1e-9)
    if ok.sum() < 3:
        raise InputError("the pointmap has fewer than 3 valid points in front of the camera; cannot infer intrinsics")
    x, y = p[ok, 0] / p[ok, 2], p[ok, 1] / p[ok, 2]
    fx, cx = _fit_line(x, u[ok])
    fy, cy = _fit_line(y, v[ok])
    if fx <= 0 or fy <= 0:
        raise InputError("the pointmap does not look like a pinhole camera's (negative focal); check its frame")
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)


def _fit_line(x: np.ndarray, u: np.ndarray) -> tuple[float, float]:
    """u ≈ f·x + c in the least-squares sense; a degenerate spread gives f from the other axis' scale."""
    a = np.stack([x, np.ones_like(x)], axis=1)
    (f, c), *_ = np.linalg.lstsq(a, u, rcond=None)
    return float(f), float(c)
