"""Gutter fill: texels that no chart covers get the colour of the covered texels around them.

Without it, texture filtering and mipmaps at a chart border mix in the empty background and every UV seam shows
as a dark line. The fill is a push-pull pyramid: covered colours are averaged down level by level (2 x 2 blocks,
weighted by coverage), and each empty texel takes the average of the covered texels in the smallest block
around it that has any. Near a chart that is the chart's own border colour; far out it blends smoothly, so
every mip level stays seam-free. Linear in the texel count (torch pooling, CPU or CUDA).

The bake already colours a margin of 1.5 texels past every chart border with the surface's true colour, so
bilinear filtering at a border never reaches this fill; it matters for minified (mipmapped) views.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def dilate(texture: np.ndarray | torch.Tensor, filled: np.ndarray | torch.Tensor):
    """(H, W, C) texture with (H, W) bool `filled` -> a copy where unfilled texels hold the pushed-pulled colour.

    Numpy in, numpy out; torch in, torch out (on the texture's device). A texture with nothing filled is
    returned unchanged.
    """
    as_numpy = isinstance(texture, np.ndarray)
    tex = torch.from_numpy(np.ascontiguousarray(texture)) if as_numpy else texture
    mask = torch.as_tensor(filled, device=tex.device)
    if bool(mask.all()) or not bool(mask.any()):
        out = tex.clone()
    else:
        out = tex.clone()
        parent = _push_pull(tex.to(torch.float32), mask)  # (ceil(H/2), ceil(W/2), C)
        rows, cols = torch.nonzero(~mask, as_tuple=True)
        values = parent[rows // 2, cols // 2]  # an empty texel takes its 2 x 2 block's fill
        out[rows, cols] = values.round().clamp(0, 255).to(out.dtype) if out.dtype == torch.uint8 \
            else values.to(out.dtype)
    return out.numpy() if as_numpy else out


def _push_pull(texture: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """(H, W, C) float texture, (H, W) bool -> the fill of the 2 x 2 blocks (ceil(H/2), ceil(W/2), C): each block
    holds the mean of the covered texels of the smallest block around it that has any."""
    weight = filled.to(torch.float32)[None, None]  # (1, 1, H, W)
    colour = (texture.permute(2, 0, 1) * weight[0])[None]  # (1, C, H, W), premultiplied by coverage
    # Push: sums over 2 x 2 blocks, level by level (odd sizes padded with empty texels).
    colour, weight = _halve(colour), _halve(weight)
    levels = [(colour, weight)]
    while max(weight.shape[-2:]) > 1:
        colour, weight = _halve(colour), _halve(weight)
        levels.append((colour, weight))
    # Pull: from the top down, an empty block takes its parent's average.
    colour, weight = levels[-1]
    fill = colour / weight.clamp(min=1e-12)
    for colour, weight in reversed(levels[:-1]):
        h, w = weight.shape[-2:]
        up = fill.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[..., :h, :w]
        fill = torch.where(weight > 0, colour / weight.clamp(min=1e-12), up)
    return fill[0].permute(1, 2, 0)


def _halve(a: torch.Tensor) -> torch.Tensor:
    """Sum over 2 x 2 blocks of the last two axes of (1, C, H, W) (zero-padding odd sizes)."""
    h, w = a.shape[-2:]
    if h % 2 or w % 2:
        a = F.pad(a, (0, w % 2, 0, h % 2))
    return F.avg_pool2d(a, 2) * 4.0
