"""Click and box prompts for Segment Anything on the reference picture, in plain Python (no bpy).

Coordinates are the engine's: pixels of the picture, x right, y down, (0, 0) the top-left corner of the top-left
pixel, so a click inside pixel (column i, row j) lies in [i, i + 1) x [j, j + 1). Blender's Image Editor speaks
in "view" coordinates instead: (0, 0) the bottom-left corner of the image, (1, 1) the top-right;
`pixel_from_view` converts.

A `Prompts` is what one mask answers: positive clicks (label 1, "this is the object"), negative clicks (label 0,
"this is not"), and at most one box. Edits check the picture's bounds and raise `InputError` with a message for
the artist; nothing is changed by a refused edit. `undo` takes back the last edit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..engine.errors import InputError

__all__ = ["Prompts", "pixel_from_view", "DRAG_THRESHOLD"]

DRAG_THRESHOLD = 5.0  # screen pixels a press must move before it draws a box instead of clicking


def pixel_from_view(u: float, v: float, width: int, height: int) -> tuple[float, float]:
    """Image Editor view coordinates (0..1, y up) -> picture pixel coordinates (x right, y down)."""
    return u * width, (1.0 - v) * height


@dataclass
class Prompts:
    width: int  # px, of the picture the prompts are on
    height: int
    points: list[tuple[float, float]] = field(default_factory=list)  # (x, y) px
    labels: list[int] = field(default_factory=list)  # per point: 1 object, 0 not the object
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) px, x0 < x1, y0 < y1
    _history: list[tuple[str, object]] = field(default_factory=list, repr=False, compare=False)

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None

    def add_point(self, x: float, y: float, positive: bool = True) -> None:
        """A click: on the object (`positive`) or on something that is not (a negative click removes it)."""
        if not self._inside(x, y):
            raise InputError(f"The click at ({x:.0f}, {y:.0f}) is outside the picture ({self.width}x{self.height})",
                             "Click on the object in the picture")
        self.points.append((float(x), float(y)))
        self.labels.append(1 if positive else 0)
        self._history.append(("point", None))

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """A box around the object (replaces the previous box); the part outside the picture is cut off."""
        left, right = sorted((float(x0), float(x1)))
        top, bottom = sorted((float(y0), float(y1)))
        left, right = max(left, 0.0), min(right, float(self.width))
        top, bottom = max(top, 0.0), min(bottom, float(self.height))
        if right - left < 1.0 or bottom - top < 1.0:
            raise InputError(f"The box from ({x0:.0f}, {y0:.0f}) to ({x1:.0f}, {y1:.0f}) does not cover a pixel of the "
                             f"picture ({self.width}x{self.height})", "Drag a box around the object in the picture")
        self._history.append(("box", self.box))
        self.box = (left, top, right, bottom)

    def undo(self) -> bool:
        """Take back the last click or box; False when there was nothing to take back."""
        if not self._history:
            return False
        kind, previous = self._history.pop()
        if kind == "point":
            self.points.pop()
            self.labels.pop()
        else:
            self.box = previous
        return True

    def clear(self) -> None:
        self.points.clear()
        self.labels.clear()
        self.box = None
        self._history.clear()

    def request(self) -> dict:
        """The prompt fields of an engine `segment` request: points, labels, box."""
        return {"points": [list(p) for p in self.points], "labels": list(self.labels),
                "box": list(self.box) if self.box is not None else None}

    def check(self) -> None:
        """Raise InputError when there is nothing to segment, or a prompt lies outside the picture (prompts read back
        from a file made for another picture)."""
        if self.empty:
            raise InputError("There are no clicks to segment from", "Click on the object, or drag a box around it")
        for x, y in self.points:
            if not self._inside(x, y):
                raise InputError(f"The click at ({x:.0f}, {y:.0f}) is outside the picture "
                                 f"({self.width}x{self.height})", "Click on the object in the picture")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
                raise InputError(f"The box {self.box} is outside the picture ({self.width}x{self.height})",
                                 "Drag a box around the object in the picture")

    def to_json(self) -> str:
        return json.dumps({"size": [self.width, self.height], **self.request()})

    @classmethod
    def from_json(cls, text: str, width: int | None = None, height: int | None = None) -> Prompts:
        """Prompts from JSON text ({"points": [[x, y], ...], "labels": [1|0, ...], "box": [x0, y0, x1, y1] or
        null}, as `to_json` writes); on a picture of `width` x `height` (default: the "size" the text names).
        Every prompt is checked as an edit is; InputError names the first bad one."""
        hint = 'Write {"points": [[x, y], ...], "labels": [1, 0, ...], "box": [x0, y0, x1, y1]} in picture pixels'
        try:
            data = json.loads(text)
            if width is None or height is None:
                width, height = (int(v) for v in data["size"])
            points = [(float(x), float(y)) for x, y in data.get("points") or []]
            labels = data.get("labels")
            labels = [1] * len(points) if labels is None else [int(v) for v in labels]
            box = data.get("box")
            box = None if box is None else tuple(float(v) for v in box)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InputError(f"The prompts are not readable ({exc})", hint) from None
        if len(labels) != len(points) or (box is not None and len(box) != 4):
            raise InputError(f"The prompts have {len(points)} points, {len(labels)} labels and a box of "
                             f"{len(box) if box else 0} numbers", hint)
        prompts = cls(int(width), int(height))
        for (x, y), label in zip(points, labels):
            prompts.add_point(x, y, positive=bool(label))
        if box is not None:
            prompts.set_box(*box)
        return prompts

    def _inside(self, x: float, y: float) -> bool:
        return 0.0 <= x < self.width and 0.0 <= y < self.height
