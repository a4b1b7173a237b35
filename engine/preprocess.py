"""Preprocessing exactly as the official pipeline does it (spec §4), for stage 1 (SS) and stage 2 (SLAT).

Per object: the pointmap is normalised around the object (ObjectCentricSSI: shift = per-axis median of the
masked points, scale = median over all pixels of the Chebyshev distance to the shift), then image, mask and
normalised pointmap are cropped to a square-ish box 1.2x the mask's bounding box, padded to a square and resized
to `size` (518 for the official model): bilinear with antialias for RGB, nearest for mask and points. The
full-image inputs are padded and resized the same way without the crop.

Shapes: images (1, 3, S, S), masks (1, 1, S, S), pointmaps (1, 3, S, S), all float32, values of images and
masks in [0, 1] (ImageNet normalisation happens inside the DINO encoder). Pointmaps are in the PyTorch3D camera
frame (+X left, +Y up, +Z forward); invalid points are NaN after normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 518  # side of the square model inputs, px
    box_size_factor: float = 1.2  # crop side = factor x the mask's bounding-box side


PRESETS = {"official": PreprocessConfig(), "tiny": PreprocessConfig(size=56)}


@dataclass
class ObjectInputs:
    """The condition inputs of one object for both stages, plus the pointmap normalisation."""

    ss: dict[str, torch.Tensor]  # image, mask, rgb_image, rgb_image_mask, pointmap, rgb_pointmap
    slat: dict[str, torch.Tensor]  # image, mask, rgb_image, rgb_image_mask
    pointmap_scale: torch.Tensor  # (1, 3) uniform scale of the SSI normalisation
    pointmap_shift: torch.Tensor  # (1, 3)


def preprocess_object(
    rgb: torch.Tensor,
    mask: torch.Tensor,
    pointmap: torch.Tensor,
    config: PreprocessConfig,
    rgb_full: torch.Tensor | None = None,
) -> ObjectInputs:
    """rgb (3, H, W) in [0, 1], mask (H, W) in [0, 1], pointmap (3, H, W) PyTorch3D frame (inf/NaN = invalid).

    `rgb_full` is the padded and resized full image when the caller already has it (it is the same for every
    object of one image); it is computed when None.
    """
    # 1. Normalise the points around the object.
    scale, shift = object_centric_scale_shift(pointmap, mask)
    points = normalize_points(pointmap, scale, shift)  # (3, H, W), NaN where invalid

    # 2. Crop around the mask (zero fill outside the image), then square-pad and resize.
    box = crop_box(mask, config.box_size_factor)
    rgb_crop, mask_crop, points_crop = (crop(x, box) for x in (rgb, mask[None], points))
    image = _square_resize(rgb_crop, config.size, pad_value=0.0, mode="bilinear")
    mask_small = _square_resize(mask_crop, config.size, pad_value=0.0, mode="nearest")
    points_small = _square_resize(points_crop, config.size, pad_value=float("nan"), mode="nearest")

    # 3. The full image, without the crop.
    if rgb_full is None:
        rgb_full = full_image(rgb, config)
    mask_full = _square_resize(mask[None], config.size, pad_value=0.0, mode="nearest")
    points_full = _square_resize(points, config.size, pad_value=0.0, mode="nearest")

    ss = {
        "image": image,
        "mask": mask_small,
        "rgb_image": rgb_full,
        "rgb_image_mask": mask_full,
        "pointmap": points_small,
        "rgb_pointmap": points_full,
    }
    slat = {"image": image, "mask": mask_small, "rgb_image": rgb_full, "rgb_image_mask": mask_full}
    return ObjectInputs(ss, slat, scale.expand(3)[None].clone(), shift[None].clone())


def full_image(rgb: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """(3, H, W) -> (1, 3, S, S): the full picture padded to a square and resized."""
    return _square_resize(rgb, config.size, pad_value=0.0, mode="bilinear")


# ---- pointmap normalisation ------------------------------------------------------------------------------------


def object_centric_scale_shift(pointmap: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale () and shift (3,) of the official ObjectCentricSSI normaliser.

    As upstream, +-inf points take part in both medians as very large values (only NaN is skipped), and
    torch's median of an even count is the lower middle value.
    """
    flat = pointmap.reshape(3, -1)
    inside = mask.reshape(-1) > 0.5
    masked = flat[:, inside]
    if masked.shape[1] == 0 or not torch.isfinite(masked).all(dim=0).any():
        raise InputError(
            "the pointmap has no valid point under the mask; give a pointmap with depth for the object "
            "(or let the engine estimate one from the image)"
        )
    shift = torch.nanmedian(masked, dim=1).values  # (3,)
    distance = (flat - shift[:, None]).abs().amax(dim=0)  # (H*W,) Chebyshev distance, NaN propagates
    scale = torch.nanmedian(distance)
    if not torch.isfinite(scale) or scale <= 0 or not torch.isfinite(shift).all():
        raise InputError(
            "the pointmap is degenerate around the object (no finite spread of depth); check the pointmap or "
            "let the engine estimate one from the image"
        )
    return scale, shift


def normalize_points(pointmap: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(p - shift) / scale; a point with any non-finite coordinate becomes NaN in all three (as upstream)."""
    out = (pointmap - shift[:, None, None]) / scale
    invalid = ~torch.isfinite(pointmap).all(dim=0)
    return out.masked_fill(invalid[None], float("nan"))


# ---- crop, pad, resize -----------------------------------------------------------------------------------------


def crop_box(mask: torch.Tensor, box_size_factor: float) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the official crop: side = int(max(w, h, 2) * factor) around the bbox centre.

    The bbox size is max - min (no +1) and each end is truncated toward zero separately, so the box may be
    one pixel off square and may leave the image.
    """
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    if len(xs) == 0:
        raise InputError("the mask is empty; draw or select the object first")
    x0, x1, y0, y1 = xs.min().item(), xs.max().item(), ys.min().item(), ys.max().item()
    side = int(max(x1 - x0, y1 - y0, 2) * box_size_factor)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = side // 2
    return int(cx - half), int(cy - half), int(cx + half), int(cy + half)


def crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """(C, H, W) -> (C, y2-y1, x2-x1); pixels outside the image are 0."""
    x1, y1, x2, y2 = box
    _, h, w = x.shape
    pad = (max(0, -x1), max(0, x2 - w), max(0, -y1), max(0, y2 - h))
    if any(pad):
        x = F.pad(x, pad, value=0.0)
        x1, x2, y1, y2 = x1 + pad[0], x2 + pad[0], y1 + pad[2], y2 + pad[2]
    return x[:, y1:y2, x1:x2]


def _square_resize(x: torch.Tensor, size: int, pad_value: float, mode: str) -> torch.Tensor:
    """(C, H, W) -> (1, C, size, size): centre-pad the short side (extra pixel after), then resize."""
    _, h, w = x.shape
    d = abs(h - w)
    before, after = d // 2, d - d // 2
    pad = (before, after, 0, 0) if w < h else (0, 0, before, after)
    if d:
        x = F.pad(x, pad, value=pad_value)
    if mode == "bilinear":
        return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(x[None], size=(size, size), mode="nearest")
