"""MoGe v1 inference: image -> pointmap, depth, mask and camera; and the pointmap SAM 3D consumes.

`infer` follows upstream `MoGeModel.infer` (float32 post-processing, scipy focal/shift recovery). SAM 3D
calls it with `force_projection=False` and the other defaults, then uses the points and intrinsics only:
`sam3d_pointmap(infer(model, rgb, force_projection=False))`.

Shapes: B batch (absent when the image is (C, H, W)), H, W image height/width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..frames import opencv_to_p3d
from .geometry import focal_from_fov_x, normalized_intrinsics, pixel_intrinsics, recover_focal_shift, unproject_depth
from .model import MoGeModel, resized_size


@dataclass(frozen=True)
class MoGeOutput:
    points_cv: torch.Tensor  # (B, H, W, 3) float32, OpenCV camera frame (x right, y down, z forward); +inf off-mask
    depth: torch.Tensor  # (B, H, W) float32, z of the points; +inf off-mask (when apply_mask)
    mask: torch.Tensor  # (B, H, W) bool, raw mask > threshold
    intrinsics: torch.Tensor  # (B, 3, 3) float32, normalised image coordinates: [[fx, 0, .5], [0, fy, .5], [0, 0, 1]]
    focal: torch.Tensor  # (B,) float32, focal length relative to the half image diagonal
    shift: torch.Tensor  # (B,) float32, z shift added to the network's affine-invariant points


@dataclass(frozen=True)
class Sam3dPointmap:
    points_p3d: torch.Tensor  # (B, H, W, 3) float32, PyTorch3D camera frame (x left, y up, z forward); +inf invalid
    intrinsics_px: torch.Tensor  # (B, 4) float32, (fx, fy, cx, cy) in pixels of the full H × W image


@torch.no_grad()
def infer(
    model: MoGeModel,
    image: torch.Tensor,
    *,
    resolution_level: float = 9,
    num_tokens: int | None = None,
    fov_x: float | torch.Tensor | None = None,
    force_projection: bool = True,
    apply_mask: bool = True,
) -> MoGeOutput:
    """Estimate the pointmap and camera of an RGB image with MoGe v1.

    image: (3, H, W) or (B, 3, H, W) float in [0, 1] (one channel is taken as grey and repeated); outputs
    drop the batch dim when the input has none. `resolution_level` 0–9 picks the token count linearly in
    the model's range (9: most detail) unless `num_tokens` is given. `fov_x` (degrees, scalar or (B,))
    fixes the horizontal field of view; otherwise the focal is recovered from the points. With
    `force_projection` the points are re-derived from depth and intrinsics so they project exactly onto
    their pixels; `apply_mask` sets points and depth to +inf where the mask is false.
    """
    # 1. Input checks, batch dim, token count.
    image, unbatched = _as_batch(image)
    height, width = image.shape[-2:]
    aspect_ratio = width / height
    if num_tokens is None:
        num_tokens = num_tokens_for(resolution_level, model.cfg.num_tokens_range)
    elif isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise InputError(f"num_tokens must be a positive int, got {num_tokens!r}")
    h, w = resized_size(height, width, num_tokens)
    if min(h, w) < model.cfg.patch_size:
        raise InputError(
            f"image {height}×{width} is too elongated for {num_tokens} tokens (resized to {h}×{w}, under one "
            f"{model.cfg.patch_size}-px patch); crop it or raise num_tokens"
        )
    if fov_x is not None:
        _check_fov(fov_x, image.shape[0])
    image = image.to(device=model.backbone.patch_embed.proj.weight.device)

    # 2. Network: affine-invariant points and the raw mask at the input size (float32).
    points, mask_raw = model(image, num_tokens)  # (B, H, W, 3), (B, H, W)
    mask = mask_raw > model.cfg.mask_threshold

    # 3. Camera: focal (relative to the half-diagonal) and z shift.
    if fov_x is None:
        focal, shift = recover_focal_shift(points, mask)
    else:
        focal = focal_from_fov_x(fov_x, aspect_ratio).to(points.device)
        if focal.ndim == 0:
            focal = focal[None].expand(points.shape[0])
        _, shift = recover_focal_shift(points, mask, focal=focal)
    intrinsics = normalized_intrinsics(focal, aspect_ratio)  # (B, 3, 3)

    # 4. Metric-up-to-scale depth and points.
    depth = points[..., 2] + shift[:, None, None]  # (B, H, W)
    if force_projection:
        points_cv = unproject_depth(depth, intrinsics)
    else:
        zeros = torch.zeros_like(shift)
        points_cv = points + torch.stack([zeros, zeros, shift], dim=-1)[:, None, None, :]  # (B, 1, 1, 3) broadcast
    if apply_mask:
        points_cv = torch.where(mask[..., None], points_cv, math.inf)
        depth = torch.where(mask, depth, math.inf)

    out = MoGeOutput(points_cv, depth, mask, intrinsics, focal, shift)
    if unbatched:
        out = MoGeOutput(*(t[0] for t in (points_cv, depth, mask, intrinsics, focal, shift)))
    return out


def sam3d_pointmap(output: MoGeOutput) -> Sam3dPointmap:
    """MoGe output -> SAM 3D's pointmap: points in the PyTorch3D camera frame ((x, y, z) -> (−x, −y, z)), +inf in
    all three coordinates wherever the mask is false or a point is not finite, and pixel intrinsics
    (fx, fy, cx, cy) of the full image (origin at the top-left pixel's corner, principal point at the centre)."""
    height, width = output.points_cv.shape[-3:-1]
    valid = output.mask & torch.isfinite(output.points_cv).all(dim=-1)  # (B, H, W)
    points_p3d = torch.where(valid[..., None], opencv_to_p3d(output.points_cv), math.inf)
    return Sam3dPointmap(points_p3d, pixel_intrinsics(output.intrinsics, width, height))


def num_tokens_for(resolution_level: float, num_tokens_range: tuple[int, int]) -> int:
    """Token count for a resolution level 0–9: linear in the range, truncated (9 gives the maximum)."""
    is_number = isinstance(resolution_level, (int, float)) and not isinstance(resolution_level, bool)
    if not is_number or not 0 <= resolution_level <= 9:
        raise InputError(f"resolution_level must be a number from 0 to 9, got {resolution_level!r}")
    low, high = num_tokens_range
    return int(low + (resolution_level / 9) * (high - low))


def _as_batch(image: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(C, H, W) or (B, C, H, W) float, C in {1, 3} -> (B, 3, H, W) and whether the input had no batch dim."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"image must be a (3, H, W) or (B, 3, H, W) tensor, got {shape}")
    if not image.is_floating_point():
        raise InputError(f"image must be float in [0, 1], got {image.dtype} (divide 8-bit images by 255)")
    unbatched = image.ndim == 3
    if unbatched:
        image = image[None]
    b, c, h, w = image.shape
    if c == 1:
        image = image.expand(b, 3, h, w)  # grey -> RGB
    elif c != 3:
        raise InputError(f"image must have 3 (RGB) or 1 (grey) channels first, got shape {tuple(image.shape)} "
                         "(drop alpha; channels go before height and width)")
    if b == 0 or h == 0 or w == 0:
        raise InputError(f"image is empty: shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise InputError("image contains NaN or infinite values")
    return image, unbatched


def _check_fov(fov_x: float | torch.Tensor, batch: int) -> None:
    values = torch.as_tensor(fov_x, dtype=torch.float64)
    if values.ndim > 1 or (values.ndim == 1 and len(values) != batch) or not ((values > 0) & (values < 180)).all():
        raise InputError(f"fov_x must be degrees in (0, 180), one number or one per image ({batch}), got {fov_x!r}")
