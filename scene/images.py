"""Pictures and masks between Blender images, files and the engine's arrays: the one place that states the layout.

Engine layout (engine/images.py): (H, W, C) numpy arrays, row 0 = the TOP of the picture, channels RGB(A).
Blender layout: `Image.pixels` is a flat float array of H·W·4 values (RGBA) whose row 0 is the BOTTOM of the
picture. For 8-bit images the values are the stored bytes / 255 (display-referred sRGB for colour pictures);
for float images (EXR, HDR, renders) they are scene-linear. So a picture is reshaped to (H, W, 4), flipped
upside down, and a float picture is encoded to sRGB before it is quantised to uint8.

Masks: an image whose alpha varies is a cut-out and its alpha is the mask; otherwise the mask is max(R, G, B)
(white object on black). Masks stay soft, float32 in [0, 1] (the engine keeps soft edges, as the official
pipeline does); a pixel counts as inside above 0.5.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import bpy
import numpy as np

__all__ = ["image_pixels", "picture_array", "mask_array", "mask_hash", "loaded_image", "read_picture", "read_mask",
           "new_picture_image", "new_mask_image", "write_mask", "image_size"]


def image_pixels(image: bpy.types.Image) -> np.ndarray:
    """(H, W, 4) float32 RGBA of a Blender image, row 0 = top (see the module docstring for the value ranges)."""
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"image '{image.name}' has no pixels (is its file missing?)")
    flat = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(flat)
    return np.flipud(flat.reshape(height, width, 4))


def picture_array(image: bpy.types.Image) -> np.ndarray:
    """(H, W, 3) uint8 sRGB picture of a Blender image, row 0 = top."""
    rgb = image_pixels(image)[:, :, :3]
    if image.is_float:
        rgb = _linear_to_srgb(np.clip(rgb, 0.0, 1.0))
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def mask_array(image: bpy.types.Image) -> np.ndarray:
    """(H, W) float32 mask in [0, 1] of a Blender image, row 0 = top (alpha for a cut-out, else max(R, G, B))."""
    pixels = image_pixels(image)
    alpha = pixels[:, :, 3]
    if alpha.min() < alpha.max():
        return np.ascontiguousarray(np.clip(alpha, 0.0, 1.0))
    return np.ascontiguousarray(np.clip(pixels[:, :, :3].max(axis=2), 0.0, 1.0))


def mask_hash(mask: np.ndarray) -> str:
    """A short stable id of a mask's inside pixels (> 0.5) and size, stored on the objects made from it."""
    inside = np.asarray(mask) > 0.5
    digest = hashlib.sha256(np.asarray(inside.shape, np.int64).tobytes() + np.packbits(inside).tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def loaded_image(path: str | os.PathLike) -> Iterator[bpy.types.Image]:
    """A picture file as a temporary Blender image, removed again afterwards (bpy.data is left as it was)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        yield image
    finally:
        bpy.data.images.remove(image)


def read_picture(source: bpy.types.Image | str | os.PathLike | np.ndarray) -> tuple[np.ndarray, str]:
    """(picture, label) from a Blender image, a file path or an array; the label names it on the created objects.

    Arrays are taken as they are ((H, W, 3|4), row 0 = top, uint8 / uint16 / float in [0, 1]).
    """
    if isinstance(source, np.ndarray):
        return source, "<array>"
    if isinstance(source, bpy.types.Image):
        return picture_array(source), source.filepath or source.name
    with loaded_image(source) as image:
        return picture_array(image), str(source)


def read_mask(source: bpy.types.Image | str | os.PathLike | np.ndarray) -> tuple[np.ndarray, str]:
    """(mask, name) from a Blender image, a file path or an array; the name (image name or file stem) names the
    object made from it ("" for an array)."""
    if isinstance(source, np.ndarray):
        mask = source
        if mask.ndim == 3:
            mask = mask[:, :, -1] if mask.shape[2] in (2, 4) else mask[:, :, 0]
        return mask, ""
    if isinstance(source, bpy.types.Image):
        return mask_array(source), Path(source.name).stem
    with loaded_image(source) as image:
        return mask_array(image), Path(source).stem


def image_size(image: bpy.types.Image) -> tuple[int, int]:
    """(width, height) of an image that has pixels; ValueError naming it otherwise (a missing file, a Render Result)."""
    if image.type not in ("IMAGE", "UV_TEST"):
        raise ValueError(f"image '{image.name}' is a {image.type.replace('_', ' ').title()}, which Python cannot read "
                         "(save it as a file and open that, or capture from the camera)")
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"image '{image.name}' has no pixels (is its file missing?)")
    return int(width), int(height)


def new_picture_image(name: str, picture: np.ndarray) -> bpy.types.Image:
    """A packed 8-bit sRGB image holding `picture` ((H, W, 3) uint8, row 0 = top) exactly, saved in the .blend."""
    height, width = picture.shape[:2]
    rgba = np.ones((height, width, 4), np.float32)
    rgba[:, :, :3] = picture[:, :, :3].astype(np.float32) / 255.0
    return _packed_image(name, rgba)


def new_mask_image(name: str, mask: np.ndarray) -> bpy.types.Image:
    """A packed 8-bit Non-Color image, white object on black, of an (H, W) mask (row 0 = top)."""
    return _packed_image(name, _mask_rgba(mask), colorspace="Non-Color")


def write_mask(image: bpy.types.Image, mask: np.ndarray) -> None:
    """Overwrite a mask image's pixels (same size) with `mask`, white object on black; packed images stay packed
    with the new pixels."""
    height, width = mask.shape[:2]
    if tuple(image.size) != (width, height):
        raise ValueError(f"mask image '{image.name}' is {image.size[0]}x{image.size[1]}, the mask {width}x{height}")
    image.pixels.foreach_set(np.flipud(_mask_rgba(mask)).reshape(-1))
    image.update()
    if image.packed_file is not None:
        image.pack()


def _mask_rgba(mask: np.ndarray) -> np.ndarray:
    value = np.clip(np.asarray(mask, np.float32), 0.0, 1.0)
    rgba = np.repeat(value[:, :, None], 4, axis=2)
    rgba[:, :, 3] = 1.0
    return rgba


def _packed_image(name: str, rgba: np.ndarray, colorspace: str = "sRGB") -> bpy.types.Image:
    """A generated byte image with these (H, W, 4) pixels (row 0 = top), packed so the .blend keeps them."""
    height, width = rgba.shape[:2]
    image = bpy.data.images.new(name, width, height, alpha=False)
    try:
        image.colorspace_settings.name = colorspace
        image.pixels.foreach_set(np.flipud(rgba).reshape(-1))
        image.update()
        image.pack()
    except BaseException:
        bpy.data.images.remove(image)
        raise
    return image


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)
