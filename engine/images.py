"""Image and mask arrays at the engine's boundary: one place that states the layout.

Layout everywhere in the engine: (H, W, C) numpy arrays, row 0 = top of the picture, channels RGB(A).
Inside the model path, images become float32 torch tensors (C, H, W) in [0, 1].
Accepted inputs: uint8, uint16 (16-bit PNG/TIFF), float (assumed 0–1, values outside are clipped), grayscale
(H, W) or (H, W, 1), RGB, RGBA (alpha is ignored: masks are given separately). EXR/HDR floats are clipped to 0–1
(tone mapping is the caller's choice).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

MIN_SIDE = 16  # below this the 1.2x crop and 14-px DINO patches carry no information


def to_rgb_float(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any supported image array -> (H, W, 3) float32 in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"{name} has shape {image.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    image = image[:, :, :3]
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{name} is {w}x{h} pixels; it must be at least {MIN_SIDE} pixels on each side")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype == np.bool_ or not np.issubdtype(image.dtype, np.number):
        raise InputError(f"{name} has dtype {image.dtype}; expected uint8, uint16 or float")
    if np.issubdtype(image.dtype, np.integer):
        raise InputError(f"{name} has dtype {image.dtype}; expected uint8, uint16 or float")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        image = np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(image, 0.0, 1.0)


def to_mask(mask: np.ndarray, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    """A mask array -> (H, W) float32 in [0, 1] (soft edges kept, as the official pipeline keeps alpha).

    bool, uint8 (0–255), uint16, or float 0–1; an (H, W, C) mask uses its last channel if it has 2 or 4
    channels (alpha) else its first. The mask must match the image size and must not be empty.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[:, :, -1] if mask.shape[2] in (2, 4) else mask[:, :, 0]
    if mask.ndim != 2:
        raise InputError(f"{name} has shape {mask.shape}; expected (H, W)")
    if mask.shape != tuple(shape):
        raise InputError(
            f"{name} is {mask.shape[1]}x{mask.shape[0]} but the image is {shape[1]}x{shape[0]}; "
            "masks must have the image's size"
        )
    if mask.dtype == np.bool_:
        out = mask.astype(np.float32)
    elif mask.dtype == np.uint8:
        out = mask.astype(np.float32) / 255.0
    elif mask.dtype == np.uint16:
        out = mask.astype(np.float32) / 65535.0
    elif np.issubdtype(mask.dtype, np.floating):
        out = np.clip(np.nan_to_num(mask.astype(np.float32), nan=0.0), 0.0, 1.0)
    elif np.issubdtype(mask.dtype, np.integer):
        out = (mask > 0).astype(np.float32)
    else:
        raise InputError(f"{name} has dtype {mask.dtype}; expected bool, uint8 or float")
    if not (out > 0.5).any():
        raise InputError(f"{name} is empty (no pixel above 0.5); draw or select the object first")
    return out


def load_image(path: str | Path) -> np.ndarray:
    """Read PNG/JPEG/TIFF/BMP/WebP (8 or 16 bit) into (H, W, C) uint8/uint16 arrays, row 0 = top."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im, dtype=np.uint32).clip(0, 65535).astype(np.uint16)
            if im.mode not in ("RGB", "RGBA", "L", "LA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read {path.name} as an image ({exc}); use PNG, JPEG or TIFF") from None


def load_mask(path: str | Path) -> np.ndarray:
    """A mask image file -> its array (see `to_mask` for how it is interpreted)."""
    return load_image(path)
