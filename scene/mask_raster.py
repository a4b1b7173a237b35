"""Blender Mask datablocks -> pixels, in numpy (no bpy): the filled splines of a Mask at a picture's size.

The splines come in as plain data (`MaskLayer`, `MaskSpline`; `scene/blender_mask.py` reads them from a Mask), so
this module is tested without Blender. The rules are Blender's, each checked against Blender's own rasteriser (the
compositor's Mask node) in tests/blender/test_mask_raster.py:

- Frame: a Mask's coordinates are those of the frame it is drawn over. The longer side of the picture spans
  [0, 1], the shorter side is centred at 0.5 with the same scale (square units), y points up. For a W x H
  picture and S = max(W, H): pixel u = W/2 + (x - 0.5)·S, v = H/2 - (y - 0.5)·S (u right, v down, from the
  top-left corner; pixel centres at +0.5).
- Splines: cubic Bezier through their points; segment i runs co[i] -> handle_right[i] -> handle_left[i+1] ->
  co[i+1]. A spline is filled as a closed shape whether or not it is cyclic (Blender closes open splines when it
  fills them); splines with fill off cover nothing.
- Within a layer, filled splines add up (a union); with the layer's "Holes" option on they combine even-odd, so a
  spline inside another cuts a hole.
- Layers apply in list order to a value that starts at 0, each with its blend mode: the layer's coverage c (0 or
  1) becomes l = c·alpha (then 1 - l when inverted) and merge-add: v + l·(1 - v), merge-subtract: v - l·v,
  add: v + l, subtract: v - l, lighten: max, darken: min, multiply: v·l, difference: |v - l|; replace mixes
  v·(1 - alpha) + c'·alpha with c' the (inverted) coverage without alpha. The value is clamped to [0, 1] after
  every layer. Layers hidden for rendering are skipped.
- A pixel counts as covered when its centre is inside. Feather is ignored: the masks we give the engine are
  sharp (Blender's feather would grow them outwards). Blender also draws the edge of a hole about a pixel into
  the hole (an anti-aliasing band); here a hole ends where its spline is, so it can be a pixel wider all round.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BLEND_MODES", "MaskSpline", "MaskLayer", "rasterize", "mask_to_pixels", "flatten_spline",
           "fill_polygons"]

BLEND_MODES = ("MERGE_ADD", "MERGE_SUBTRACT", "ADD", "SUBTRACT", "LIGHTEN", "DARKEN", "MUL", "REPLACE",
               "DIFFERENCE")
MAX_STEPS = 1024  # line pieces per Bezier segment, at most (one per pixel of the control polygon, at least 8)


@dataclass(frozen=True)
class MaskSpline:
    """One spline's control points in the Mask's frame (see the module docstring), each (N, 2)."""

    points: np.ndarray  # (N, 2) the points the curve passes through
    handles_left: np.ndarray  # (N, 2) the handle before each point
    handles_right: np.ndarray  # (N, 2) the handle after each point
    fill: bool = True


@dataclass(frozen=True)
class MaskLayer:
    splines: list[MaskSpline] = field(default_factory=list)
    blend: str = "MERGE_ADD"  # one of BLEND_MODES
    alpha: float = 1.0
    invert: bool = False
    holes: bool = False  # Blender's "Holes" (use_fill_holes): splines combine even-odd instead of adding up
    render: bool = True  # False: hidden for rendering, skipped


def rasterize(layers: list[MaskLayer], width: int, height: int) -> np.ndarray:
    """(height, width) float32 mask in [0, 1], row 0 = top, of `layers` over a width x height picture."""
    if width < 1 or height < 1:
        raise ValueError(f"a mask needs a picture of at least 1x1 pixels, got {width}x{height}")
    value = np.zeros((height, width), np.float32)
    for layer in layers:
        if not layer.render:
            continue
        if layer.blend not in BLEND_MODES:
            raise ValueError(f"unknown mask blend mode {layer.blend!r}; expected one of {BLEND_MODES}")
        coverage = _layer_coverage(layer, width, height).astype(np.float32)
        value = np.clip(_blend(value, coverage, layer), 0.0, 1.0)
    return value


def mask_to_pixels(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """(..., 2) Mask-frame coordinates -> (..., 2) pixel coordinates (u right, v down, from the top-left)."""
    xy = np.asarray(xy, np.float64)
    side = max(width, height)
    u = width / 2.0 + (xy[..., 0] - 0.5) * side
    v = height / 2.0 - (xy[..., 1] - 0.5) * side
    return np.stack([u, v], axis=-1)


def flatten_spline(spline: MaskSpline, width: int, height: int) -> np.ndarray:
    """(P, 2) pixel-space polygon along the spline's closed Bezier curve (the last point is not repeated)."""
    p = mask_to_pixels(spline.points, width, height)  # (N, 2)
    left = mask_to_pixels(spline.handles_left, width, height)
    right = mask_to_pixels(spline.handles_right, width, height)
    count = len(p)
    if count < 2:
        return p
    pieces = []
    for i in range(count):
        j = (i + 1) % count
        control = np.stack([p[i], right[i], left[j], p[j]])  # (4, 2) the segment's Bezier polygon
        length = np.linalg.norm(np.diff(control, axis=0), axis=1).sum()
        steps = int(np.clip(np.ceil(length), 8, MAX_STEPS))
        t = (np.arange(steps, dtype=np.float64) / steps)[:, None]  # (steps, 1), the segment's end is the next start
        s = 1.0 - t
        pieces.append(s**3 * control[0] + 3 * s * s * t * control[1] + 3 * s * t * t * control[2] + t**3 * control[3])
    return np.concatenate(pieces)


def fill_polygons(polygons: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """(height, width) bool: pixel centres inside an odd number of times (even-odd rule) over all `polygons`,
    each a closed (P, 2) pixel-space polygon.

    One pass for all edges: every edge that crosses a row's centre line toggles the pixels of that row to the right
    of the crossing; the parity of the toggles, summed along the row, says inside or out.
    """
    toggles = np.zeros((height, width + 1), np.int32)
    for polygon in polygons:
        if len(polygon) < 3:
            continue
        a = polygon
        b = np.roll(polygon, -1, axis=0)
        low = np.minimum(a[:, 1], b[:, 1])
        high = np.maximum(a[:, 1], b[:, 1])
        # Rows whose centre y = r + 0.5 lies in [low, high): half-open, so a vertex on a centre line counts once.
        first = np.clip(np.ceil(low - 0.5), 0, height).astype(np.int64)
        stop = np.clip(np.ceil(high - 0.5), 0, height).astype(np.int64)
        count = stop - first
        keep = count > 0
        if not keep.any():
            continue
        edge = np.repeat(np.nonzero(keep)[0], count[keep])  # (C,) one entry per crossing
        offsets = np.arange(len(edge)) - np.repeat(np.cumsum(count[keep]) - count[keep], count[keep])
        rows = first[edge] + offsets
        y = rows + 0.5
        x0, y0, x1, y1 = a[edge, 0], a[edge, 1], b[edge, 0], b[edge, 1]
        x = x0 + (y - y0) * (x1 - x0) / (y1 - y0)  # y1 != y0: horizontal edges cross no centre line
        columns = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)  # first pixel centre right of the crossing
        np.add.at(toggles, (rows, columns), 1)
    return (np.cumsum(toggles[:, :width], axis=1) % 2).astype(bool)


def _layer_coverage(layer: MaskLayer, width: int, height: int) -> np.ndarray:
    polygons = [flatten_spline(s, width, height) for s in layer.splines if s.fill and len(s.points) >= 2]
    if layer.holes:
        return fill_polygons(polygons, width, height)
    covered = np.zeros((height, width), bool)
    for polygon in polygons:
        covered |= fill_polygons([polygon], width, height)
    return covered


def _blend(value: np.ndarray, coverage: np.ndarray, layer: MaskLayer) -> np.ndarray:
    alpha = float(layer.alpha)
    if layer.blend == "REPLACE":
        c = 1.0 - coverage if layer.invert else coverage
        return value * (1.0 - alpha) + c * alpha
    c = coverage * alpha
    if layer.invert:
        c = 1.0 - c
    if layer.blend == "MERGE_ADD":
        return value + c * (1.0 - value)
    if layer.blend == "MERGE_SUBTRACT":
        return value - c * value
    if layer.blend == "ADD":
        return value + c
    if layer.blend == "SUBTRACT":
        return value - c
    if layer.blend == "LIGHTEN":
        return np.maximum(value, c)
    if layer.blend == "DARKEN":
        return np.minimum(value, c)
    if layer.blend == "MUL":
        return value * c
    return np.abs(value - c)  # DIFFERENCE
