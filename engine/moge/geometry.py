"""Camera geometry of MoGe v1: the view-plane uv grid, focal/shift recovery, intrinsics, unprojection, frames.

Frames and units used here (conversions between camera frames live in engine/frames.py):
* OpenCV camera frame (`*_cv`): x right, y down, z forward. MoGe predicts points in this frame.
* Normalised image coordinates: u = x_px / W, v = y_px / H with the origin at the top-left corner of the
  top-left pixel, so pixel (i, j) has its centre at ((j + .5) / W, (i + .5) / H).
* View-plane uv: a centred grid whose half-diagonal is 1 (see `normalized_view_plane_uv`). MoGe's `focal` is
  the focal length relative to the half-diagonal: a point projects to uv = focal · (x, y) / z.

Shapes: B batch, H, W map height/width, N selected points.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import least_squares

SOLVER_SIZE = (64, 64)  # (h, w); maps are nearest-resized to this before the focal/shift solve


def normalized_view_plane_uv(
    width: int,
    height: int,
    aspect_ratio: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pixel-centre grid on the view plane, (H, W, 2) as (u, v), spanning a rectangle of half-diagonal 1.

    `aspect_ratio` (width / height, default the grid's own) sets the rectangle: half-width a / √(1 + a²),
    half-height 1 / √(1 + a²). Pixel centres sit half a pixel inside its border.
    """
    if aspect_ratio is None:
        aspect_ratio = width / height
    span_x = aspect_ratio / (1 + aspect_ratio**2) ** 0.5
    span_y = 1 / (1 + aspect_ratio**2) ** 0.5
    # Python-float end points, as upstream computes them (bit-for-bit the same grid).
    u_end = span_x * (width - 1) / width
    v_end = span_y * (height - 1) / height
    u = torch.linspace(-u_end, u_end, width, dtype=dtype, device=device)
    v = torch.linspace(-v_end, v_end, height, dtype=dtype, device=device)
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)  # (H, W, 2)


def recover_focal_shift(
    points: torch.Tensor, mask: torch.Tensor | None = None, focal: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Focal (relative to the half-diagonal) and z shift that make `points` project onto the view plane.

    points: (..., H, W, 3) affine-invariant points (OpenCV frame, float32); mask: (..., H, W) bool or None;
    focal: (...,) when known, then only the shift is solved. Returns (focal, shift), each (...,) in the
    points' dtype. Minimises |focal · xy / (z + shift) − uv| over a 64×64 nearest-resized copy with scipy's
    Levenberg–Marquardt (the same call as upstream, early stop included); items with fewer than 2 valid
    points give focal 1, shift 0. Runs on the CPU in numpy.
    """
    batch_shape = points.shape[:-3]
    uv_lr, points_lr, mask_lr = solver_inputs(points, mask)
    focal_given = None if focal is None else focal.reshape(-1).detach().cpu().numpy()
    focals, shifts = [], []
    for i in range(points_lr.shape[0]):
        uv_i = uv_lr if mask_lr is None else uv_lr[mask_lr[i]]
        xyz_i = points_lr[i] if mask_lr is None else points_lr[i][mask_lr[i]]
        if uv_i.shape[0] < 2:
            focals.append(1.0)
            shifts.append(0.0)
        elif focal_given is None:
            focal_i, shift_i = solve_focal_shift(uv_i, xyz_i)
            focals.append(focal_i)
            shifts.append(shift_i)
        else:
            shifts.append(solve_shift(uv_i, xyz_i, focal_given[i]))
    shift_out = torch.tensor(shifts, dtype=points.dtype, device=points.device).reshape(batch_shape)
    if focal is None:
        focal_out = torch.tensor(focals, dtype=points.dtype, device=points.device).reshape(batch_shape)
    else:
        focal_out = focal.reshape(batch_shape)
    return focal_out, shift_out


def solver_inputs(
    points: torch.Tensor, mask: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What the solver sees: uv (64, 64, 2), points (B, 64, 64, 3), mask (B, 64, 64) bool or None (numpy).

    Each is resized with nearest sampling; uv uses the map's own aspect ratio; the mask is resized as float
    and thresholded at > 0.
    """
    height, width = points.shape[-3:-1]
    points = points.reshape(-1, height, width, 3)  # (B, H, W, 3)
    uv = normalized_view_plane_uv(width, height, dtype=points.dtype, device=points.device)  # (H, W, 2)
    points_lr = F.interpolate(points.permute(0, 3, 1, 2), SOLVER_SIZE, mode="nearest").permute(0, 2, 3, 1)
    uv_lr = F.interpolate(uv.permute(2, 0, 1)[None], SOLVER_SIZE, mode="nearest")[0].permute(1, 2, 0)  # (64, 64, 2)
    mask_lr = None
    if mask is not None:
        mask = mask.reshape(-1, 1, height, width).to(torch.float32)  # (B, 1, H, W)
        mask_lr = (F.interpolate(mask, SOLVER_SIZE, mode="nearest")[:, 0] > 0).cpu().numpy()  # (B, 64, 64)
    return uv_lr.cpu().numpy(), points_lr.detach().cpu().numpy(), mask_lr


def solve_focal_shift(uv: np.ndarray, xyz: np.ndarray) -> tuple[float, float]:
    """(focal, shift) minimising |focal · xy / (z + shift) − uv|; uv (N, 2), xyz (N, 3) float32.

    The focal has a closed form for a given shift, so LM runs over the shift alone (x0 = 0, ftol 1e-3,
    MINPACK finite differences). The shift is rounded to float32 and the focal recomputed from it in float32.
    Note the return order (focal, shift); upstream's numpy helper returns (shift, focal).
    """
    uv, xy, z = uv.reshape(-1, 2), xyz[..., :2].reshape(-1, 2), xyz[..., 2].reshape(-1)

    def residuals(shift: np.ndarray) -> np.ndarray:  # shift: (1,) float64 -> (2N,)
        xy_proj = xy / (z + shift)[:, None]
        focal = (xy_proj * uv).sum() / np.square(xy_proj).sum()
        return (focal * xy_proj - uv).ravel()

    solution = least_squares(residuals, x0=0, ftol=1e-3, method="lm")
    shift = solution.x.squeeze().astype(np.float32)
    xy_proj = xy / (z + shift)[:, None]
    focal = (xy_proj * uv).sum() / np.square(xy_proj).sum()
    return float(focal), float(shift)


def solve_shift(uv: np.ndarray, xyz: np.ndarray, focal: float) -> float:
    """Shift minimising |focal · xy / (z + shift) − uv| for a known focal; same LM call as `solve_focal_shift`."""
    uv, xy, z = uv.reshape(-1, 2), xyz[..., :2].reshape(-1, 2), xyz[..., 2].reshape(-1)

    def residuals(shift: np.ndarray) -> np.ndarray:  # shift: (1,) float64 -> (2N,)
        xy_proj = xy / (z + shift)[:, None]
        return (focal * xy_proj - uv).ravel()

    solution = least_squares(residuals, x0=0, ftol=1e-3, method="lm")
    return float(solution.x.squeeze().astype(np.float32))


def focal_from_fov_x(fov_x: float | torch.Tensor, aspect_ratio: float) -> torch.Tensor:
    """Horizontal field of view (degrees) -> focal relative to the half-diagonal (float32 tensor)."""
    fov_x = torch.as_tensor(fov_x, dtype=torch.float32)
    return aspect_ratio / (1 + aspect_ratio**2) ** 0.5 / torch.tan(torch.deg2rad(fov_x / 2))


def normalized_intrinsics(focal: torch.Tensor, aspect_ratio: float) -> torch.Tensor:
    """Focal relative to the half-diagonal (...,) -> K (..., 3, 3) in normalised image coordinates.

    fx = focal/2 · √(1 + a²)/a, fy = focal/2 · √(1 + a²), principal point (0.5, 0.5); a = width / height.
    """
    diagonal = (1 + aspect_ratio**2) ** 0.5
    fx = focal / 2 * diagonal / aspect_ratio
    fy = focal / 2 * diagonal
    zero, one, half = torch.zeros_like(fx), torch.ones_like(fx), torch.full_like(fx, 0.5)
    rows = [torch.stack([fx, zero, half], -1), torch.stack([zero, fy, half], -1), torch.stack([zero, zero, one], -1)]
    return torch.stack(rows, dim=-2)  # (..., 3, 3)


def unproject_depth(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Depth (..., H, W) and normalised K (..., 3, 3) -> points_cv (..., H, W, 3) through the pixel centres."""
    height, width = depth.shape[-2:]
    u = (torch.arange(width, dtype=depth.dtype, device=depth.device) + 0.5) / width  # (W,)
    v = (torch.arange(height, dtype=depth.dtype, device=depth.device) + 0.5) / height  # (H,)
    fx, fy = intrinsics[..., 0, 0, None, None], intrinsics[..., 1, 1, None, None]  # (..., 1, 1)
    cx, cy = intrinsics[..., 0, 2, None, None], intrinsics[..., 1, 2, None, None]
    x = (u - cx) / fx * depth  # (..., H, W)
    y = (v[:, None] - cy) / fy * depth
    return torch.stack([x, y, depth], dim=-1)  # (..., H, W, 3)


def pixel_intrinsics(intrinsics: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Normalised K (..., 3, 3) -> (fx, fy, cx, cy) (..., 4) in pixels of a width × height image.

    Pixel coordinates have their origin at the top-left corner of the top-left pixel (its centre is (.5, .5)).
    """
    scale = intrinsics.new_tensor([width, height, width, height])
    k = intrinsics[..., [0, 1, 0, 1], [0, 1, 2, 2]]  # (..., 4): fx, fy, cx, cy
    return k * scale

