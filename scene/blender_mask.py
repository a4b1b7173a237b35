"""A Blender Mask datablock as plain splines (`scene/mask_raster.py`), and rasterised at a picture's size.

The Mask is read as the depsgraph evaluates it at the scene's current frame: animation and parenting applied, and
the handles of AUTO / VECTOR / ALIGNED points computed (the original datablock holds them only once an editing
tool has recalculated them).
"""
from __future__ import annotations

import bpy
import numpy as np

from .mask_raster import MaskLayer, MaskSpline, rasterize

__all__ = ["read_layers", "rasterize_mask"]


def read_layers(mask: bpy.types.Mask, depsgraph: bpy.types.Depsgraph | None = None) -> list[MaskLayer]:
    """The layers of `mask` (evaluated in `depsgraph`, default the context's) in Blender's order."""
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    evaluated = mask.evaluated_get(depsgraph)
    return [MaskLayer(splines=[_spline(s) for s in layer.splines], blend=layer.blend, alpha=layer.alpha,
                      invert=layer.invert, holes=layer.use_fill_holes, render=not layer.hide_render)
            for layer in evaluated.layers]


def rasterize_mask(mask: bpy.types.Mask, width: int, height: int,
                   depsgraph: bpy.types.Depsgraph | None = None) -> np.ndarray:
    """(height, width) float32 in [0, 1], row 0 = top: `mask` filled over a width x height picture."""
    return rasterize(read_layers(mask, depsgraph), width, height)


def _spline(spline: bpy.types.MaskSpline) -> MaskSpline:
    count = len(spline.points)
    arrays = {}
    for name in ("co", "handle_left", "handle_right"):
        flat = np.empty(count * 2, np.float32)
        spline.points.foreach_get(name, flat)
        arrays[name] = flat.reshape(count, 2).astype(np.float64)
    return MaskSpline(arrays["co"], arrays["handle_left"], arrays["handle_right"], fill=spline.use_fill)
