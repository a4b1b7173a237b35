"""Click-to-segment on the reference picture: prompts in, the engine's Segment Anything mask out.

One `SegmentSession` per tool use; the modal tool (segment_tool.py) and the blocking operator (masks.py) drive it
the same way:

    segment = SegmentSession.start(picture)   # writes the picture for the worker (once)
    segment.prompts.add_point(x, y)           # edits; a bad one raises InputError and changes nothing
    segment.pump(0.1)                         # sends the latest prompts when the worker is free, reads answers;
                                              # True when the mask (or the error) changed: redraw
    mask = segment.result()                   # blocks until the mask answers the current prompts; (H, W) bool
    segment.close()                           # stops a request in flight, deletes the files

At most one request is in flight. When the artist clicks faster than SAM answers, only the newest prompts are sent
next: answers to older ones would be stale on arrival. The worker keeps the picture's embedding, so every click
after the first costs only the mask decoder.
"""
from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..engine.client import EngineClient, Request
from ..engine.errors import Cancelled, EngineError, InputError
from ..engine.jobs import write_png
from ..scene import images
from ..scene.prompts import Prompts
from . import session

__all__ = ["SegmentSession"]

STALE_S = 24 * 3600  # a session folder this old was left by a Blender that stopped mid-session
_folders = itertools.count(1)


class SegmentSession:
    def __init__(self, picture: np.ndarray, folder: Path, client: EngineClient, sam: str,
                 prompts: Prompts | None = None, sam_size: str | None = None):
        height, width = picture.shape[:2]
        self.folder = folder
        self.client = client
        self.sam = sam
        self.sam_size = sam_size
        self.prompts = prompts or Prompts(width, height)
        self.picture_path = folder / "picture.png"
        write_png(self.picture_path, np.ascontiguousarray(picture[:, :, :3]))
        self.mask: np.ndarray | None = None  # (H, W) bool, the answer to `answered`
        self.score = 0.0  # SAM's predicted IoU of `mask`
        self.answered: dict | None = None  # the prompts `mask` answers
        self.error: EngineError | None = None  # why the prompts `failed` got no mask
        self.failed: dict | None = None
        self.request: Request | None = None
        self._sent: dict | None = None
        self._requests = itertools.count(1)

    @classmethod
    def start(cls, picture: np.ndarray, prompts: Prompts | None = None) -> SegmentSession:
        """A session on `picture` ((H, W, 3) uint8, row 0 = top) with the preferences' engine and SAM model.
        Raises SetupError (with its fix) when the engine or the model is not set up."""
        prefs = session.preferences()
        for problem in session.sam_problems(prefs):
            raise problem.error()
        return cls(picture, _new_folder(), session.client(prefs), session.sam_spec(prefs), prompts,
                   session.sam_size(prefs))

    @property
    def size(self) -> tuple[int, int]:
        return self.prompts.width, self.prompts.height

    @property
    def up_to_date(self) -> bool:
        """The mask (or the error) answers the current prompts; nothing is in flight."""
        if self.request is not None:
            return False
        wanted = self.prompts.request()
        return self.prompts.empty or wanted in (self.answered, self.failed)

    def pump(self, timeout: float = 0.0) -> bool:
        """Read an answer if one came (waiting up to `timeout` s) and send the newest prompts when the worker is
        free; True when the mask or the error changed."""
        changed = False
        if self.request is not None:
            if not self.request.pump(timeout):
                return False
            changed = self._settle()
        if self.prompts.empty:
            if self.mask is not None or self.error is not None:
                self.mask, self.answered, self.error, self.failed = None, None, None, None
                changed = True
            return changed
        if not self.up_to_date:
            self._send(self.prompts.request())
        return changed

    def result(self) -> np.ndarray:
        """The mask for the current prompts ((H, W) bool), waiting for it; raises the engine's error, or
        InputError when there are no prompts or SAM found nothing."""
        self.prompts.check()
        while not self.up_to_date:
            self.pump(0.1)
        if self.error is not None:
            raise self.error
        if self.mask is None or not self.mask.any():
            raise InputError("Segment Anything found nothing at these clicks: the mask is empty",
                             "Click on the object, drag a box around it, or add clicks")
        return self.mask

    def close(self) -> None:
        if self.request is not None and not self.request.finished:
            self.request.cancel()
        self.request = None
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- requests -----------------------------------------------------------------------------------------------

    def _send(self, wanted: dict) -> None:
        out = self.folder / f"mask_{next(self._requests):04d}.png"
        self._sent = wanted
        self.request = self.client.segment(str(self.picture_path), str(out), wanted["points"], wanted["labels"],
                                           box=wanted["box"], multimask=False, sam=self.sam,
                                           sam_size=self.sam_size)

    def _settle(self) -> bool:
        """Take the finished request's answer; True when it changed what is shown."""
        request, sent = self.request, self._sent
        self.request, self._sent = None, None
        try:
            payload = request.outcome()
            mask = self._read_mask(Path(payload["out"]))
        except Cancelled:
            return False
        except EngineError as exc:
            self.mask, self.answered, self.error, self.failed = None, None, exc, sent
            return True
        self.mask, self.answered, self.error, self.failed = mask, sent, None, None
        self.score = float(payload.get("score", 0.0))
        return True

    def _read_mask(self, path: Path) -> np.ndarray:
        try:
            mask, _name = images.read_mask(path)
        except (FileNotFoundError, ValueError) as exc:
            raise InputError(f"The engine's mask could not be read ({exc})", "Click again") from None
        if mask.shape != (self.prompts.height, self.prompts.width):
            raise InputError(f"The engine's mask is {mask.shape[1]}x{mask.shape[0]}, the picture "
                             f"{self.prompts.width}x{self.prompts.height}", "Click again")
        path.unlink(missing_ok=True)
        return mask > 0.5


def _new_folder() -> Path:
    """A fresh folder for one session's files; folders left behind by sessions that never closed are deleted."""
    base = session.user_dir("segment")
    for old in base.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > STALE_S:
            shutil.rmtree(old, ignore_errors=True)
    folder = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_folders)}"
    folder.mkdir()
    return folder
