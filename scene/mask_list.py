"""The reference's mask list: new entries with their image, a free name and a colour of their own."""
from __future__ import annotations

import colorsys

import bpy
import numpy as np

from . import images

__all__ = ["add_mask", "free_name", "next_color"]


def add_mask(settings, source: str, *, name: str = "", mask: np.ndarray | None = None,
             image: bpy.types.Image | None = None, blender_mask: bpy.types.Mask | None = None, prompts: str = ""):
    """Append a selected, active mask to `settings.masks` and return it. `mask` ((H, W), row 0 = top) becomes a
    packed mask image named after the entry; or `image` is used as it is."""
    name = name or free_name(settings)
    if image is None and mask is not None:
        image = images.new_mask_image(f"{name} Mask", mask)
    item = settings.masks.add()
    item.name, item.source, item.select = name, source, True
    item.image, item.blender_mask, item.prompts = image, blender_mask, prompts
    item.color = next_color(len(settings.masks) - 1)
    settings.active_mask = len(settings.masks) - 1
    return item


def free_name(settings, stem: str = "Object") -> str:
    """"Object 1", "Object 2", ...: the first not used by a mask of the list."""
    used = {m.name for m in settings.masks}
    number = 1
    while f"{stem} {number}" in used:
        number += 1
    return f"{stem} {number}"


def next_color(index: int) -> tuple[float, float, float]:
    """Well separated colours for masks 0, 1, 2, ... (hues a golden angle apart)."""
    return colorsys.hsv_to_rgb((0.08 + 0.618034 * index) % 1.0, 0.75, 1.0)
