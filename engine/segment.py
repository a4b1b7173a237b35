"""Prompt -> mask segmentation in the worker: the `segment` request (protocol.py), answered with SAM (engine/sam).

The worker holds one `SegmentSession`. It loads the SAM model on the first `segment` request and keeps it for the
next ones (it reloads only when another model is asked for); its `SamPredictor` keeps the embeddings of the last
few pictures by content hash, so a new click on the same picture skips the image encoder (`cached` in the result).
`release` drops the model and every embedding, together with the pipeline.

Nothing heavy runs before the request is known to be sound, and nothing is written unless a mask comes out: the
picture is read and the prompts are checked first (a bad click costs no model load), the cancel flag is checked
after loading, after the embedding and after decoding, and the mask PNG is written last, through a temporary file
and a rename, so a reader never sees half a mask.

Request fields (`SegmentRequest.from_payload`):
* `image`: path of the picture file (PNG, JPEG, TIFF, BMP, WebP; 8 or 16 bit; engine.images.load_image);
* `points` [[x, y], ...] and `labels` [1 = add, 0 = remove, ...], `box` [x0, y0, x1, y1] or null: pixels of that
  picture, origin at its top-left corner, x right, y down (the centre of the pixel in column i, row j is at
  (i + 0.5, j + 0.5)); clicks, a box, or both;
* `multimask`: false, the predictor's own single answer (engine/sam/predictor.py: the best of three for one click
  or a box alone, the decoder's single-mask answer for several prompts); true, the best-scoring non-empty one of
  the three ambiguity-aware masks;
* `out`: the mask file to write, `.png`: 8-bit grey, the picture's size, 255 = object, 0 = background, row 0 = top;
* `sam`: the model (engine/sam/weights.py: a `.pth` file or a folder with one, `hf:OWNER/NAME[@REVISION]/FILE.pth`
  fetched with `download` progress, or `random:PRESET` seeded random weights for tests); `sam_size` (optional):
  the size the weights must be, else read from them (public sizes only: a `tiny` test file needs "tiny").

Result: `out`, `score` (the decoder's predicted IoU of the mask), `area` (object pixels), `bbox` [x0, y0, x1, y1]
(the object's pixels in the prompts' frame, x1 and y1 exclusive: pixel edges), `size` [W, H] of the picture, and
`cached` (the picture's embedding was already there).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import Cancelled, InputError
from .images import MIN_SIDE, load_image, to_rgb_float
from .jobs import write_png
from .sam.predictor import SamPrediction, SamPredictor, validate_prompts
from .sam.weights import load_sam

__all__ = ["SegmentRequest", "SegmentSession"]

Progress = Callable[[str, float], None]  # (stage, fraction of that stage in [0, 1])

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}  # the names the pipeline takes


@dataclass(frozen=True)
class SegmentRequest:
    """One `segment` request, its fields typed (see the module docstring for what each means)."""

    image: Path  # the picture file
    out: Path  # the mask PNG to write
    points: np.ndarray | None  # (N, 2) px, x right, y down
    labels: np.ndarray | None  # (N,) 1 add, 0 remove
    box: np.ndarray | None  # (4,) px x0, y0, x1, y1
    multimask: bool = False
    sam: str = ""  # model spec
    sam_size: str | None = None  # "vit_b" | "vit_l" | "vit_h" | "tiny"; None: read from the weights

    @classmethod
    def from_payload(cls, payload: dict) -> SegmentRequest:
        """The request a protocol payload describes; raises InputError naming the first field that is unusable."""
        image = _text(payload, "image", "the path of the picture to segment")
        out = _text(payload, "out", "the path of the mask PNG to write")
        if Path(out).suffix.lower() != ".png":
            raise InputError(f"segment: out {out!r} is not a .png path", "name the mask file NAME.png")
        if Path(out).expanduser().resolve() == Path(image).expanduser().resolve():
            raise InputError(f"segment: out {out!r} is the picture itself", "write the mask to another file")
        multimask = payload.get("multimask", False)
        if not isinstance(multimask, bool):
            raise InputError(f"segment: multimask is {multimask!r}; expected true or false")
        sam, sam_size = payload.get("sam") or "", payload.get("sam_size")
        if not isinstance(sam, str) or not (sam_size is None or isinstance(sam_size, str)):
            raise InputError(f"segment: sam {sam!r} / sam_size {sam_size!r} must be strings",
                             "give the SAM weights as a file path, hf:OWNER/NAME/FILE.pth or random:tiny")
        return cls(image=Path(image).expanduser(), out=Path(out).expanduser(),
                   points=_numbers(payload.get("points"), "points", "a list of [x, y] pixel positions", (-1, 2)),
                   labels=_numbers(payload.get("labels"), "labels", "a list of 1 (add) and 0 (remove)", (-1,)),
                   box=_numbers(payload.get("box"), "box", "[x0, y0, x1, y1] in pixels", (4,)),
                   multimask=multimask, sam=sam, sam_size=sam_size)


class SegmentSession:
    """The SAM model and its embedding cache, kept between the `segment` requests of one worker."""

    def __init__(self, device: str = "cpu", dtype: str = "auto"):
        # "auto" is float32: the mask is the sign of the logits, and SAM is small next to the 3D pipeline
        # (ViT-H 2.5 GB); a precision asked for explicitly is honoured.
        if dtype != "auto" and dtype not in _DTYPES:
            raise InputError(f"unknown precision {dtype!r}; choose auto, float32, bfloat16 or float16")
        self.device = device
        self.dtype = _DTYPES.get(dtype, torch.float32)
        self._predictor: SamPredictor | None = None
        self._model_key: tuple[str, str | None] | None = None

    @property
    def loaded(self) -> bool:
        return self._predictor is not None

    def segment(self, request: SegmentRequest, progress: Progress | None = None,
                cancel: threading.Event | None = None) -> dict:
        """Answer one request (see the module docstring): write its mask and return the result payload."""
        report = progress or (lambda stage, fraction: None)
        # 1. the picture and its prompts, before anything heavy
        image = _read_picture(request.image)
        height, width = image.shape[:2]
        points, labels, box = validate_prompts(request.points, request.labels, request.box, (height, width))
        # 2. the model, kept from an earlier request when it is the same one
        report("load", 0.0)
        predictor = self._load(request.sam, request.sam_size, report, cancel)
        report("load", 1.0)
        _check(cancel)
        # 3. the picture's embedding, cached by content
        runs = predictor.encoder_runs
        report("embed", 0.0)
        predictor.set_image(image)
        cached = predictor.encoder_runs == runs
        report("embed", 1.0)
        _check(cancel)
        # 4. the mask (the predictor refuses prompts that leave every mask empty)
        mask, score = _choose(predictor.predict(points, labels, box, multimask=request.multimask))
        _check(cancel)
        # 5. the file, last
        report("write", 0.0)
        _write_mask(request.out, mask)
        report("write", 1.0)
        rows, cols = np.nonzero(mask)
        return {"out": str(request.out), "score": score, "area": int(rows.size),
                "bbox": [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1],
                "size": [int(width), int(height)], "cached": cached}

    def release(self) -> None:
        """Drop the model and every cached embedding (the caller frees the device's cache)."""
        if self._predictor is not None:
            self._predictor.clear()
        self._predictor = None
        self._model_key = None

    def _load(self, spec: str, size: str | None, report: Progress, cancel: threading.Event | None) -> SamPredictor:
        key = (spec, size)
        if self._predictor is not None and self._model_key == key:
            return self._predictor
        self.release()

        def download(name: str, done: int, total: int | None) -> None:
            _check(cancel)  # stops a download part-way; the downloader resumes it next time
            report("download", done / total if total else 0.0)

        model = load_sam(spec, variant=size, device=self.device, dtype=self.dtype, progress=download)
        self._predictor = SamPredictor(model)
        self._model_key = key
        return self._predictor


# ------------------------------------------------------------------------------------------------------------------
# Helpers


def _read_picture(path: Path) -> np.ndarray:
    """The picture file as the engine reads images; every failure is an InputError that names the file."""
    try:
        image = load_image(path)
    except InputError as exc:
        hint = ("check the path; a picture that lives only in Blender must be saved to a file first"
                if not path.is_file() else "choose a PNG, JPEG or TIFF file (save a render or an EXR as PNG first)")
        raise InputError(exc.message, exc.hint or hint) from None
    try:
        to_rgb_float(image, name=f"picture {path.name}")  # shape and size checks, before the model loads
    except InputError as exc:
        raise InputError(exc.message, exc.hint or f"choose an RGB or grey picture at least {MIN_SIDE} pixels on "
                         "each side") from None
    return image


def _choose(prediction: SamPrediction) -> tuple[np.ndarray, float]:
    """The mask to write, (H, W) bool, and its score: the best-scoring non-empty one of what came back."""
    scores = np.where(prediction.masks.any(axis=(1, 2)), prediction.scores, -np.inf)
    best = int(np.argmax(scores))
    return prediction.masks[best], float(prediction.scores[best])


def _write_mask(out: Path, mask: np.ndarray) -> None:
    """(H, W) bool -> 8-bit grey PNG (255 = object), written to a temporary name and renamed into place."""
    partial = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_png(partial, np.where(mask, 255, 0).astype(np.uint8))
        os.replace(partial, out)
    except OSError as exc:
        raise InputError(f"cannot write the mask to {out} ({exc.strerror or exc})",
                         "choose a folder you can write to, with free space") from None
    finally:
        partial.unlink(missing_ok=True)


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("Cancelled.")


def _text(payload: dict, key: str, what: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"segment: {key} is {value!r:.80}; expected {what}", f"send {key} with the request")
    return value


def _numbers(value: object, name: str, what: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """A JSON list of numbers as an array of `shape` (-1: any length); None stays None."""
    if value is None:
        return None
    try:
        array = np.asarray(value)
    except ValueError:  # ragged lists
        array = None
    if array is not None and array.size == 0:
        array = np.zeros((0,) + shape[1:])
    if array is None or array.dtype.kind not in "biuf" or array.ndim != len(shape) \
            or any(s not in (-1, n) for s, n in zip(shape, array.shape)):
        raise InputError(f"segment: {name} is {value!r:.80}; expected {what}",
                         "send the prompts as the segment request describes them (protocol.py)")
    return array
