"""Folder batch: every picture of a folder with its masks -> one collection of objects each, resumable.

Folder layout: pictures (`*.png`, `*.jpg`, ...) and, for a picture `NAME.png`, its masks `NAME_mask*.png`
(any picture format; sorted by name; the part after `_mask` names the object, e.g. `chair_mask_seat.png` ->
"seat"). Every item gets a JSON log `LOG_DIR/NAME.json` (status "running", then "ok", "error", "skipped" or
"cancelled", with the objects, seed, quality, seconds and the error's message and hint). A later batch over the
same folder skips the items whose log says "ok" — and those whose collection is already in the file (the file
was saved but the log not yet written) — so an interrupted batch resumes where it stopped. With `save`, the
.blend is saved after every finished item, before its log says "ok".
"""
from __future__ import annotations

import json
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from ..engine.errors import Cancelled, EngineError
from ..scene import images
from ..scene.build import PROPERTY_PREFIX
from ..scene.properties import QUALITY_ITEMS
from . import runner

__all__ = ["PICTURE_SUFFIXES", "BatchItem", "find_items", "BatchRun", "THREEDFY_OT_reconstruct_folder", "classes"]

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".bmp", ".webp")
_MASK = re.compile(r"^(?P<item>.+?)_mask(?P<label>.*)$")


@dataclass
class BatchItem:
    name: str  # the picture's file stem
    picture: Path
    masks: list[Path]
    log: Path

    def read_log(self) -> dict:
        try:
            return json.loads(self.log.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def write_log(self, **entry) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        document = {"item": self.name, "picture": str(self.picture), "masks": [str(m) for m in self.masks], **entry}
        temporary = self.log.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(document, indent=1), encoding="utf-8")
        temporary.replace(self.log)


def find_items(folder: Path, log_dir: Path) -> list[BatchItem]:
    """The batch's items in name order: each picture of `folder` with its masks."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES)
    masks: dict[str, list[Path]] = {}
    pictures = []
    for path in files:
        match = _MASK.match(path.stem)
        if match:
            masks.setdefault(match["item"], []).append(path)
        else:
            pictures.append(path)
    return [BatchItem(p.stem, p, masks.get(p.stem, []), log_dir / f"{p.stem}.json") for p in pictures]


def mask_label(item: BatchItem, mask: Path) -> str:
    label = _MASK.match(mask.stem)["label"].strip("_- ")
    return label or f"{item.name} {item.masks.index(mask) + 1}"


@dataclass
class BatchRun:
    """Drives the items one at a time with `step()` (blocking loop or modal timer), like ReconstructionRun."""

    folder: Path
    options: runner.RunOptions
    camera: bpy.types.Object | None = None
    log_dir: Path | None = None
    save: bool = False
    report: object = print
    items: list[BatchItem] = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {"ok": 0, "error": 0, "skipped": 0, "done before": 0})
    cancelled: bool = False
    _queue: list[BatchItem] = field(default_factory=list)
    _current: tuple[BatchItem, runner.ReconstructionRun, float] | None = None

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if not self.folder.is_dir():
            raise EngineError(f"'{self.folder}' is not a folder", "Choose the folder that holds the pictures")
        self.log_dir = Path(self.log_dir) if self.log_dir else self.folder / "3dfy_log"
        self.items = find_items(self.folder, self.log_dir)
        self._queue = list(self.items)

    @property
    def finished(self) -> bool:
        return self._current is None and (self.cancelled or not self._queue)

    @property
    def progress(self) -> tuple[str, float]:
        done = len(self.items) - len(self._queue) - (1 if self._current else 0)
        label = self._current[0].name if self._current else ""
        if self._current:
            stage, _ = self._current[1].progress
            label = f"{label}: {stage}"
        return label, done / max(1, len(self.items))

    def cancel(self) -> None:
        self.cancelled = True
        if self._current is not None:
            self._current[1].cancel()

    def step(self, scene: bpy.types.Scene, timeout: float = 0.0) -> bool:
        """Advance the batch; True when it is over."""
        if self._current is None:
            self._start_next(scene)
            return self.finished
        item, run, started = self._current
        if not run.step(timeout):
            return False
        self._current = None
        try:
            collection, objects = run.finish(scene)
            collection[f"{PROPERTY_PREFIX}batch_item"] = item.name
            collection[f"{PROPERTY_PREFIX}batch_folder"] = str(self.folder)
            if self.save and bpy.data.filepath:
                bpy.ops.wm.save_mainfile()
        except Cancelled:
            item.write_log(status="cancelled", message="Cancelled; the next batch redoes this item")
            self.cancelled = True
            return self.finished
        except EngineError as exc:
            self._failed(item, exc.kind, exc.message, exc.hint, started)
            return self.finished
        except Exception as exc:  # a bug: keep going with the next item, keep the details
            self._failed(item, "internal", f"{type(exc).__name__}: {exc}", traceback.format_exc(), started)
            return self.finished
        item.write_log(status="ok", collection=collection.name, objects=[o.name for o in objects],
                       seed=self.options.seed, quality=self.options.quality,
                       seconds=round(time.monotonic() - started, 2))
        self.counts["ok"] += 1
        self.report({"INFO"}, f"{item.name}: added {len(objects)} objects to '{collection.name}'")
        return self.finished

    def run_blocking(self, scene: bpy.types.Scene) -> dict:
        try:
            while not self.step(scene, 0.1):
                pass
        except KeyboardInterrupt:
            self.cancel()
            while not self.step(scene, 0.1):
                pass
            raise
        return self.counts

    def _start_next(self, scene: bpy.types.Scene) -> None:
        while self._queue and not self.cancelled:
            item = self._queue.pop(0)
            if item.read_log().get("status") == "ok" or _collection_of(item, self.folder) is not None:
                if item.read_log().get("status") != "ok":
                    collection = _collection_of(item, self.folder)
                    item.write_log(status="ok", collection=collection.name,
                                   objects=[o.name for o in collection.objects], recovered=True)
                self.counts["done before"] += 1
                continue
            if not item.masks:
                item.write_log(status="skipped", message=f"No masks: expected files named {item.name}_mask*.png")
                self.counts["skipped"] += 1
                continue
            started = time.monotonic()
            item.write_log(status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
            try:
                picture, _ = images.read_picture(item.picture)
                masks = [images.read_mask(m)[0] for m in item.masks]
                inputs = runner.RunInputs(picture, masks, [mask_label(item, m) for m in item.masks],
                                          str(item.picture), camera=self.camera)
                options = runner.RunOptions(**{**vars(self.options), "collection": f"3Dfy {item.name}"})
                run = runner.ReconstructionRun(inputs, options, report=self.report)
                run.start()
            except EngineError as exc:
                self._failed(item, exc.kind, exc.message, exc.hint, started)
                continue
            except (OSError, ValueError) as exc:
                self._failed(item, "bad_input", str(exc), "Check the picture and mask files", started)
                continue
            self._current = (item, run, started)
            return

    def _failed(self, item: BatchItem, kind: str, message: str, hint: str, started: float) -> None:
        item.write_log(status="error", error={"kind": kind, "message": message, "hint": hint},
                       seconds=round(time.monotonic() - started, 2))
        self.counts["error"] += 1
        self.report({"WARNING"}, f"{item.name}: {message}")


def _collection_of(item: BatchItem, folder: Path) -> bpy.types.Collection | None:
    for collection in bpy.data.collections:
        if collection.get(f"{PROPERTY_PREFIX}batch_item") == item.name \
                and collection.get(f"{PROPERTY_PREFIX}batch_folder") == str(folder):
            return collection
    return None


def summary_text(counts: dict) -> str:
    return ", ".join(f"{value} {key}" for key, value in counts.items() if value) or "nothing to do"


class THREEDFY_OT_reconstruct_folder(bpy.types.Operator):
    """3Dfy every picture of a folder that has masks (NAME.png + NAME_mask*.png); resumes an interrupted batch"""

    bl_idname = "threedfy.reconstruct_folder"
    bl_label = "3Dfy Folder"

    directory: StringProperty(name="Folder", subtype="DIR_PATH")
    quality: EnumProperty(name="Quality", items=QUALITY_ITEMS, default="default")
    seed: IntProperty(name="Seed", default=0, min=0)
    origin_at_base: BoolProperty(name="Origin at Base", default=False)
    save: BoolProperty(name="Save After Each", default=True,
                       description="Save the .blend after every finished picture (it must have been saved once)")

    _batch: BatchRun | None = None
    _timer = None
    _modal = False

    def execute(self, context):
        try:
            batch = BatchRun(Path(bpy.path.abspath(self.directory)),
                             runner.RunOptions(seed=self.seed, quality=self.quality,
                                               origin_at_base=self.origin_at_base),
                             camera=context.scene.camera, save=self.save, report=self.report)
        except EngineError as exc:
            self.report({"ERROR"}, f"{exc.message}. {exc.hint}")
            return {"CANCELLED"}
        if self._modal:
            self._batch = batch
            self._timer = context.window_manager.event_timer_add(0.1, window=context.window)
            context.window_manager.modal_handler_add(self)
            return {"RUNNING_MODAL"}
        batch.run_blocking(context.scene)
        return self._finish(batch)

    def invoke(self, context, event):
        self._modal = not bpy.app.background
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._batch.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        done = self._batch.step(context.scene, 0.0)
        label, fraction = self._batch.progress
        context.workspace.status_text_set(f"3Dfy folder: {label} ({100 * fraction:.0f}%, Esc to cancel)")
        if not done:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)
        return self._finish(self._batch)

    def _finish(self, batch: BatchRun) -> set[str]:
        text = f"3Dfy folder: {summary_text(batch.counts)}; logs in {batch.log_dir}"
        self.report({"WARNING"} if batch.counts["error"] or batch.cancelled else {"INFO"}, text)
        return {"CANCELLED"} if batch.cancelled else {"FINISHED"}


classes = (THREEDFY_OT_reconstruct_folder,)
