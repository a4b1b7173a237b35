"""Condition inputs for a batch of objects at once, on the device: `engine.preprocess.preprocess_object` batched.

Training feeds the condition embedders exactly what the pipeline feeds them at inference, for hundreds of objects
per step, so the per-object work of `preprocess.py` is done here with whole-batch tensor operations:

1. ObjectCentricSSI per object (`ssi_scale_shift`): shift = per-axis median of the masked points, scale = median
   over all pixels of the Chebyshev distance to the shift (torch's lower median, NaN skipped, inf counted), and
   the normalised points (p − shift) / scale with NaN wherever a point is not finite;
2. the crop box per object (side int(max(w, h, 2)·1.2) around the mask's bounding box, ends truncated toward 0);
3. crop (zero outside the image, points too), centre-pad to a square (0; NaN for the cropped points), resize to
   S: nearest for masks and points (torch's float32 index rule), bilinear with antialiasing for RGB (torch's
   separable triangle filter, normalised over the padded square). Both resizes are written as per-object index
   maps or weight matrices from the original image, so crop, pad and resize are one gather or two matmuls.

Shapes: B scenes, Q objects, H/W image size, S model input side. Images (B, 3, H, W) in [0, 1]; pointmaps
(B, 3, H, W) in the PyTorch3D camera frame (inf where unknown); masks (Q, H, W) float in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..preprocess import PreprocessConfig


@dataclass
class ObjectBatch:
    """Per object: the stage-1 and stage-2 condition inputs, and the pointmap normalisation."""

    ss: dict[str, torch.Tensor]  # image, mask, rgb_image, rgb_image_mask, pointmap, rgb_pointmap: (Q, C, S, S)
    slat: dict[str, torch.Tensor]  # image, mask, rgb_image, rgb_image_mask
    pointmap_scale: torch.Tensor  # (Q,) the SSI scale
    pointmap_shift: torch.Tensor  # (Q, 3) the SSI shift


def object_inputs(
    rgb: torch.Tensor,
    points: torch.Tensor,
    masks: torch.Tensor,
    scene: torch.Tensor,
    config: PreprocessConfig,
) -> ObjectBatch:
    """rgb (B, 3, H, W), points (B, 3, H, W) PyTorch3D frame, masks (Q, H, W), scene (Q,) int64 -> ObjectBatch."""
    _, _, h, w = rgb.shape
    size = config.size
    q = masks.shape[0]
    masks = masks.float()

    # 1. Object-centric normalisation of each object's pointmap.
    obj_points = points[scene].float()  # (Q, 3, H, W)
    scale, shift = ssi_scale_shift(obj_points, masks)
    normalized = (obj_points - shift[:, :, None, None]) / scale[:, None, None, None]
    normalized = normalized.masked_fill(~torch.isfinite(obj_points).all(dim=1, keepdim=True), math.nan)

    # 2. Crop boxes, and the whole picture as a box for the full-image inputs.
    boxes = crop_boxes(masks, config.box_size_factor)  # (Q, 4) x1, y1, x2, y2
    whole = torch.tensor([0, 0, w, h], device=rgb.device)

    # 3. Crop, square-pad and resize.
    rgb_full = resample_bilinear(rgb, whole.expand(rgb.shape[0], 4), size)[scene]  # shared by a scene's objects
    ss = {
        "image": resample_bilinear(rgb[scene], boxes, size),
        "mask": resample_nearest(masks[:, None], boxes, size, pad_value=0.0),
        "rgb_image": rgb_full,
        "rgb_image_mask": resample_nearest(masks[:, None], whole.expand(q, 4), size, pad_value=0.0),
        "pointmap": resample_nearest(normalized, boxes, size, pad_value=math.nan),
        "rgb_pointmap": resample_nearest(normalized, whole.expand(q, 4), size, pad_value=0.0),
    }
    slat = {k: ss[k] for k in ("image", "mask", "rgb_image", "rgb_image_mask")}
    return ObjectBatch(ss, slat, scale, shift)


def ssi_scale_shift(points: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """points (Q, 3, H, W), masks (Q, H, W) -> scale (Q,), shift (Q, 3), as `preprocess.object_centric_scale_shift`.

    The caller makes sure every mask covers at least one finite point (training picks such objects)."""
    q = points.shape[0]
    flat = points.reshape(q, 3, -1)  # (Q, 3, HW)
    inside = masks.reshape(q, 1, -1) > 0.5
    shift = torch.nanmedian(torch.where(inside, flat, math.nan), dim=-1).values  # (Q, 3)
    distance = (flat - shift[:, :, None]).abs().amax(dim=1)  # (Q, HW) Chebyshev distance, NaN propagates
    scale = torch.nanmedian(distance, dim=-1).values  # (Q,)
    return scale, shift


def crop_boxes(masks: torch.Tensor, box_size_factor: float) -> torch.Tensor:
    """(Q, H, W) -> (Q, 4) int64 (x1, y1, x2, y2), as `preprocess.crop_box` (empty masks are not allowed)."""
    on = masks > 0
    rows, cols = on.any(dim=2), on.any(dim=1)  # (Q, H), (Q, W)
    h, w = rows.shape[1], cols.shape[1]
    y0 = rows.to(torch.uint8).argmax(dim=1)
    y1 = h - 1 - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x0 = cols.to(torch.uint8).argmax(dim=1)
    x1 = w - 1 - cols.flip(1).to(torch.uint8).argmax(dim=1)
    extent = torch.maximum(torch.maximum(x1 - x0, y1 - y0), torch.full_like(x0, 2)).double()
    side = torch.floor(extent * box_size_factor).long()  # int() of a positive double
    half = (side // 2).double()
    cx, cy = (x0 + x1).double() / 2, (y0 + y1).double() / 2
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1).trunc().long()


def resample_nearest(src: torch.Tensor, boxes: torch.Tensor, size: int, pad_value: float) -> torch.Tensor:
    """src (Q, C, H, W), boxes (Q, 4) -> (Q, C, S, S): crop (0 outside the image), pad to a square with
    `pad_value`, nearest resize (torch: index = min(floor(i · float32(L / S)), L − 1))."""
    q, c, h, w = src.shape
    ys, y_pad, y_out = _nearest_axis(boxes, size, h, vertical=True)  # (Q, S) each
    xs, x_pad, x_out = _nearest_axis(boxes, size, w, vertical=False)
    index = (ys[:, :, None] * w + xs[:, None, :]).reshape(q, 1, size * size).expand(q, c, size * size)
    out = torch.gather(src.reshape(q, c, h * w), 2, index).reshape(q, c, size, size)  # (Q, C, S, S)
    outside = (y_out[:, :, None] | x_out[:, None, :])[:, None]  # in the crop box, outside the image: 0
    pad = (y_pad[:, :, None] | x_pad[:, None, :])[:, None]  # in the square padding
    out = out.masked_fill(outside, 0.0)
    return out.masked_fill(pad, pad_value)


def resample_bilinear(src: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """src (Q, C, H, W), boxes (Q, 4) -> (Q, C, S, S): crop and pad with 0, bilinear resize with antialiasing
    (F.interpolate(..., antialias=True) on the padded crop). Written as out = Wy @ src @ Wxᵀ per object."""
    _, _, h, w = src.shape
    wy = _bilinear_axis(boxes, size, h, vertical=True)  # (Q, S, H)
    wx = _bilinear_axis(boxes, size, w, vertical=False)  # (Q, S, W)
    rows = torch.einsum("qiy,qcyx->qcix", wy.to(src.dtype), src)  # (Q, C, S, W)
    return torch.einsum("qcix,qjx->qcij", rows, wx.to(src.dtype))  # (Q, C, S, S)


def _square(boxes: torch.Tensor, vertical: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Side L (Q,), this axis' crop length (Q,) and padding before it (Q,) of each padded square."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    length = h if vertical else w
    return side, length, (side - length) // 2


def _nearest_axis(boxes: torch.Tensor, size: int, extent: int, vertical: bool):
    """Image index (Q, S) of every output pixel along one axis, and whether it is padding / outside the image."""
    side, length, before = _square(boxes, vertical)
    start = boxes[:, 1] if vertical else boxes[:, 0]
    i = torch.arange(size, device=boxes.device, dtype=torch.float32)
    scale = side.float() / size  # float32, as torch computes it
    u = torch.floor(i[None] * scale[:, None]).long()
    u = torch.minimum(u, side[:, None] - 1)
    same = side[:, None] == size
    u = torch.where(same, i[None].long().expand_as(u), u)  # torch's identity special case
    crop = u - before[:, None]  # (Q, S) index inside the crop
    pad = (crop < 0) | (crop >= length[:, None])
    image = start[:, None] + crop
    outside = (~pad) & ((image < 0) | (image >= extent))
    return image.clamp(0, extent - 1), pad, outside


def _bilinear_axis(boxes: torch.Tensor, size: int, extent: int, vertical: bool) -> torch.Tensor:
    """(Q, S, extent) weights of torch's antialiased bilinear resize of the padded crop, mapped onto image pixels."""
    side, length, before = _square(boxes, vertical)
    start = boxes[:, 1] if vertical else boxes[:, 0]
    device = boxes.device
    scale = side.double() / size  # (Q,)
    support = torch.where(scale >= 1.0, scale, torch.ones_like(scale))
    invscale = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))
    centre = scale[:, None] * (torch.arange(size, device=device, dtype=torch.float64)[None] + 0.5)  # (Q, S)
    lo = torch.clamp((centre - support[:, None] + 0.5).trunc(), min=0).long()
    hi = torch.minimum((centre + support[:, None] + 0.5).trunc().long(), side[:, None])
    taps = int(math.ceil(2 * float(support.max()))) + 2
    u = lo[..., None] + torch.arange(taps, device=device)  # (Q, S, T) padded-square index of each tap
    weight = (1 - ((u - centre[..., None] + 0.5) * invscale[:, None, None]).abs()).clamp(min=0)
    weight = torch.where(u < hi[..., None], weight, torch.zeros_like(weight))
    total = weight.sum(dim=-1, keepdim=True)
    weight = torch.where(total > 0, weight / total, torch.zeros_like(weight))
    crop = u - before[:, None, None]
    image = start[:, None, None] + crop
    keep = (crop >= 0) & (crop < length[:, None, None]) & (image >= 0) & (image < extent)  # else a zero pixel
    out = torch.zeros(boxes.shape[0], size, extent, dtype=torch.float64, device=device)
    out.scatter_add_(2, image.clamp(0, extent - 1), torch.where(keep, weight, torch.zeros_like(weight)))
    return out.float()
