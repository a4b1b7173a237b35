"""Click/box prompts -> masks on one picture, the way segment-anything's `SamPredictor` does it.

`set_image` resizes the picture so its longest side is the model's input side S (1024; aspect kept, sides rounded
half up, PIL bilinear on 8-bit RGB as upstream), runs the image encoder once and caches the embedding under a hash of
the picture (a few pictures are kept, least recently used first out). `predict` moves the prompts into the resized
frame (x · w/W, y · h/H), decodes, scales the 256 x 256 low-res logits back to the picture (up to S x S, crop the
resized part, up to H x W, bilinear) and thresholds them at 0.

Which masks come back:
* `multimask=True`: the three ambiguity-aware masks (decoder tokens 1..3) with their predicted IoU, upstream order.
* `multimask=False`: one mask, chosen as Meta's web demo chooses it: when the prompt is a single click or a box
  alone (upstream counts at most 2 prompt tokens: click + padding point, or the two box corners) the best-scoring
  of the three multimask answers; otherwise (several clicks, click + box) the decoder's single-mask answer (token 0,
  what `SamPredictor.predict(multimask_output=False)` returns).

Coordinates are pixels of the original picture, x right, y down, (0, 0) the top-left corner of the top-left pixel
(a click at (i, j) hits the pixel in column i, row j). Bad prompts raise `InputError` naming the prompt; a result
whose masks are all empty raises `InputError` too unless `allow_empty=True`.

Shapes: N clicks, K returned masks, M low-res side, (H, W) picture, (h, w) resized picture, S input side.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..images import to_rgb_float
from .model import Sam


@dataclass(frozen=True)
class SamPrediction:
    masks: np.ndarray  # (K, H, W) bool, on the picture set with set_image
    scores: np.ndarray  # (K,) float32, the decoder's predicted IoU of each mask
    low_res_logits: np.ndarray  # (K, M, M) float32; one of them can be passed back as `mask_input` to refine
    mask_tokens: tuple[int, ...]  # which decoder mask tokens these are (0 single-mask answer, 1..3 multimask)


@dataclass(frozen=True)
class _Embedding:
    features: torch.Tensor  # (1, E, G, G) on the model's device
    original_size: tuple[int, int]  # (H, W)
    input_size: tuple[int, int]  # (h, w)


class SamPredictor:
    """Holds a `Sam` model and the embeddings of the last few pictures (by content hash)."""

    def __init__(self, model: Sam, *, cache_size: int = 4):
        if cache_size < 1:
            raise ValueError("SamPredictor: cache_size must be at least 1")
        self.model = model.eval()
        self.cache_size = cache_size
        self.encoder_runs = 0  # image-encoder passes so far (diagnostics, tests)
        self._cache: OrderedDict[str, _Embedding] = OrderedDict()
        self._current: str | None = None

    @property
    def image_key(self) -> str | None:
        """Hash of the picture predictions are made on (None before set_image)."""
        return self._current

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the current picture."""
        return self._cache[self._current].original_size if self._current else None

    def set_image(self, image: np.ndarray) -> str:
        """Make `image` ((H, W, 3|4) or (H, W); uint8, uint16 or float 0-1; RGB, alpha ignored) the picture to
        prompt on. The embedding is computed unless this exact picture is cached. Returns the picture's key."""
        image = np.asarray(image)
        if image.dtype.hasobject:
            to_rgb_float(image, name="SAM image")  # raises the InputError that names the dtype
        key = image_key(image)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            rgb = to_rgb_float(image, name="SAM image")  # validates shape, dtype and size
            self._cache[key] = self._embed(np.round(rgb * 255.0).astype(np.uint8))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._current = key
        return key

    def clear(self) -> None:
        """Drop every cached embedding (e.g. before the model is released)."""
        self._cache.clear()
        self._current = None

    def predict(
        self,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        *,
        multimask: bool = False,
        mask_input: np.ndarray | None = None,
        allow_empty: bool = False,
    ) -> SamPrediction:
        """Masks for clicks `points` (N, 2) px with `labels` (N,) (1 adds, 0 removes) and/or one `box`
        (x1, y1, x2, y2) px on the current picture. `mask_input` (M, M) or (1, M, M): low-res logits of an earlier
        prediction on the same picture, to refine it. See the module docstring for which masks come back."""
        if self._current is None:
            raise InputError("SAM has no picture to segment", "set the image before sending prompts")
        entry = self._cache[self._current]
        height, width = entry.original_size
        points, labels, box = validate_prompts(points, labels, box, (height, width))
        m = self.model.cfg.low_res_size
        device = entry.features.device
        coords_t = labels_t = box_t = mask_t = None
        # 1. prompts into the resized frame
        if points is not None:
            scaled = apply_coords(points, (height, width), self.model.cfg.img_size)
            coords_t = torch.as_tensor(scaled, dtype=torch.float32, device=device)[None]  # (1, N, 2)
            labels_t = torch.as_tensor(labels, dtype=torch.int64, device=device)[None]  # (1, N)
        if box is not None:
            scaled = apply_boxes(box[None], (height, width), self.model.cfg.img_size)
            box_t = torch.as_tensor(scaled, dtype=torch.float32, device=device)  # (1, 4)
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            if mask_input.shape not in ((m, m), (1, m, m)) or not np.isfinite(mask_input).all():
                raise InputError(f"mask_input has shape {mask_input.shape}; expected finite ({m}, {m}) low-res logits",
                                 "pass back one of an earlier prediction's low_res_logits")
            mask_t = torch.as_tensor(mask_input.reshape(1, 1, m, m), device=device)
        # 2. decode all four mask tokens, pick the ones to return
        with torch.inference_mode():
            logits, iou = self.model.decode(entry.features, coords_t, labels_t, box_t, mask_t)  # (1, 4, M, M), (1, 4)
            num_prompt_tokens = (0 if points is None else len(points)) + (2 if box is not None else 1)
            tokens = select_tokens(iou[0].float().cpu().numpy(), multimask, num_prompt_tokens)
            chosen = logits[:, list(tokens)]  # (1, K, M, M)
            # 3. back to the picture
            full = self.model.postprocess_masks(chosen, entry.input_size, entry.original_size)[0]  # (K, H, W)
            masks = (full > self.model.cfg.mask_threshold).cpu().numpy()
        if not allow_empty and not masks.any():
            raise InputError("SAM found no object at these prompts: the mask is empty",
                             "add a positive click (label 1) on the object, or draw a box around it")
        return SamPrediction(masks=masks, scores=iou[0, list(tokens)].float().cpu().numpy(),
                             low_res_logits=chosen[0].float().cpu().numpy(), mask_tokens=tokens)

    def _embed(self, rgb: np.ndarray) -> _Embedding:
        """(H, W, 3) uint8 -> the cached record: resize (PIL bilinear), encode."""
        height, width = rgb.shape[:2]
        h, w = preprocess_shape(height, width, self.model.cfg.img_size)
        resized = np.array(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))  # (h, w, 3)
        device = self.model.image_encoder.pos_embed.device
        x = torch.as_tensor(resized, device=device).permute(2, 0, 1)[None].float()  # (1, 3, h, w), 0-255
        with torch.inference_mode():
            features = self.model.embed(x)  # (1, E, G, G)
        self.encoder_runs += 1
        return _Embedding(features=features, original_size=(height, width), input_size=(h, w))


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with max(h, w) = long_side, the aspect kept, each side rounded half up."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def apply_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """(..., 2) x, y px on the (H, W) picture -> px on the resized picture (x · w/W, y · h/H), float64."""
    height, width = original_size
    h, w = preprocess_shape(height, width, long_side)
    out = np.array(coords, dtype=np.float64)
    out[..., 0] *= w / width
    out[..., 1] *= h / height
    return out


def apply_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """(B, 4) x1, y1, x2, y2 px -> the same corners on the resized picture."""
    return apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size, long_side).reshape(-1, 4)


def select_tokens(iou: np.ndarray, multimask: bool, num_prompt_tokens: int) -> tuple[int, ...]:
    """Decoder mask tokens to return, from the four IoU predictions (see the module docstring).

    num_prompt_tokens counts what the decoder sees: clicks, plus 1 padding point without a box, plus 2 box corners.
    """
    if multimask:
        return (1, 2, 3)
    if num_prompt_tokens <= 2:
        return (1 + int(np.argmax(iou[1:])),)
    return (0,)


def validate_prompts(points, labels, box, size: tuple[int, int]):
    """Check and normalise the prompts: points (N, 2) float64 | None, labels (N,) int64 | None, box (4,) float64
    | None (corners sorted). Raises InputError naming the first bad prompt."""
    height, width = size
    bounds = f"x must be in 0..{width}, y in 0..{height}"
    if points is not None:
        points = np.asarray(points, dtype=np.float64)
        if points.ndim == 1 and points.shape == (2,):
            points = points[None]
        if points.ndim != 2 or points.shape[1] != 2:
            raise InputError(f"points have shape {points.shape}; expected (N, 2) pixel coordinates x, y",
                             "send each click as [x, y] in pixels of the picture")
        if len(points) == 0:
            points = None
    if points is not None:
        if labels is None:
            raise InputError(f"{len(points)} point(s) but no labels", "give one label per point: 1 adds, 0 removes")
        labels = np.asarray(labels).reshape(-1)
        if labels.shape != (len(points),):
            raise InputError(f"{len(points)} point(s) but {labels.size} label(s)",
                             "give one label per point: 1 adds, 0 removes")
        bad = [int(i) for i in np.flatnonzero((labels != 0) & (labels != 1))]
        if bad:
            raise InputError(f"point {bad[0]} has label {labels[bad[0]]!r}; labels must be 1 (add) or 0 (remove)",
                             "label each click 1 to add what it is on, 0 to remove it")
        labels = labels.astype(np.int64)
        for i, (x, y) in enumerate(points):
            if not (np.isfinite(x) and np.isfinite(y)):
                raise InputError(f"point {i} is ({x}, {y}): not a finite pixel position", "click inside the picture")
            if not (0 <= x <= width and 0 <= y <= height):
                raise InputError(f"point {i} at ({x:g}, {y:g}) lies outside the {width}x{height} image ({bounds})",
                                 "click inside the picture")
    if box is not None:
        box = np.asarray(box, dtype=np.float64).reshape(-1)
        if box.shape != (4,) or not np.isfinite(box).all():
            raise InputError(f"box is {box.tolist()}; expected four finite numbers x1, y1, x2, y2 in pixels",
                             "draw the box inside the picture")
        x1, x2 = sorted(box[[0, 2]])
        y1, y2 = sorted(box[[1, 3]])
        if not (0 <= x1 and x2 <= width and 0 <= y1 and y2 <= height):
            raise InputError(f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) reaches outside the {width}x{height} image "
                             f"({bounds})", "draw the box inside the picture")
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            raise InputError(f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has no area", "drag a box, or click instead")
        box = np.array([x1, y1, x2, y2])
    if points is None and box is None:
        raise InputError("no prompt for SAM", "click on the object or draw a box around it")
    return points, labels, box


def image_key(image: np.ndarray) -> str:
    """Content hash of a picture array (shape, dtype and bytes)."""
    image = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.shape}|{image.dtype.str}|".encode())
    digest.update(image.reshape(-1).view(np.uint8))
    return digest.hexdigest()
