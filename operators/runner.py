"""One 3Dfy run, driven the same way by the blocking path (operator execute, api.reconstruct) and the modal path.

    run = ReconstructionRun(inputs, options)
    run.start()                 # checks the set-up, writes the job folder, queues it with the engine
    while not run.step(0.1):    # pumps the engine client; a modal timer calls step(0) instead
        run.progress            # (stage label, fraction)
    objects = run.finish(scene) # reads and checks every result, then builds the scene (all or nothing)

`run.cancel()` asks the engine to stop; `finish` then raises `Cancelled`. Failures raise engine errors
(`EngineError` and subclasses: message + hint), which operators report and the API lets through.
"""
from __future__ import annotations

import random
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import bpy
import numpy as np
from mathutils import Matrix

from ..engine import jobs
from ..engine.client import Request
from ..engine.errors import InputError
from ..scene import placement
from ..scene.build import Provenance, create_objects
from ..scene.images import mask_hash
from . import session

__all__ = ["RunInputs", "RunOptions", "ReconstructionRun", "stage_label", "active_run"]

STAGE_LABELS = {
    "load": "Loading the model", "download": "Downloading weights", "pointmap": "Estimating depth",
    "condition": "Reading the picture", "geometry": "Shape and pose", "voxels": "Voxels",
    "layout": "Fitting the layout to the mask", "texture": "Texture",
    "gaussians": "Gaussians", "mesh": "Mesh", "write": "Writing results", "queued": "Waiting for the engine",
    "starting": "Starting the engine", "scene": "Building the scene",
}

_active: ReconstructionRun | None = None  # the run the UI shows (one at a time)


def stage_label(stage: str) -> str:
    return STAGE_LABELS.get(stage, stage.replace("_", " ").capitalize())


def active_run() -> ReconstructionRun | None:
    """The run whose engine side is still going (the UI shows it; one at a time)."""
    if _active is None or _active.done or _active.request is None or _active.request.finished:
        return None
    return _active


@dataclass
class RunInputs:
    """What to reconstruct: a picture, its masks and (optionally) the camera it was seen through."""

    image: np.ndarray  # (H, W, 3|4) uint8 / uint16 / float, row 0 = top
    masks: list[np.ndarray]  # (H, W) each, soft or binary
    names: list[str]  # per mask: the object's name ("" -> "Object N")
    source_image: str  # file path or image name, stored on the objects
    camera: bpy.types.Object | None = None  # the objects are placed as seen through it; None: front view
    pointmap: np.ndarray | None = None  # (H, W, 3) camera frame (OpenGL), e.g. from a camera capture
    intrinsics: np.ndarray | None = None  # (3, 3) pixels; used by the engine together with a pointmap
    camera_matrix: Matrix | None = None  # camera -> world to place with instead of `camera`'s (a capture's viewpoint)

    def check(self) -> None:
        if not self.masks:
            raise InputError("No mask is selected", "Add a mask to the reference and tick its box")
        shape = self.image.shape[:2]
        for index, (name, mask) in enumerate(zip(self.names, self.masks)):
            label = name or f"Object {index + 1}"
            if mask.shape[:2] != shape:
                raise InputError(f"Mask '{label}' is {mask.shape[1]}x{mask.shape[0]} but the picture is "
                                 f"{shape[1]}x{shape[0]}", "Masks must have the picture's size")
            if not (np.asarray(mask) > 0.5).any():
                raise InputError(f"Mask '{label}' is empty", "Paint or select the object in it, or untick it")


@dataclass
class RunOptions:
    seed: int = 0
    quality: str = "default"
    origin_at_base: bool = False
    collection: bpy.types.Collection | str | None = None
    weights: str | None = None  # None: from the preferences
    keep_job: bool = False  # keep the job folder even after success (for inspection)


@dataclass
class ReconstructionRun:
    inputs: RunInputs
    options: RunOptions
    report: Callable[[set, str], None] = field(default=lambda level, text: None)
    job_folder: Path | None = None
    request: Request | None = None
    camera_matrix: Matrix | None = None  # camera -> world when the run started (the picture's viewpoint)
    seen_camera: dict = field(default_factory=dict)  # how the engine saw the picture (result.json "camera")
    done: bool = False

    # -- engine side -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the set-up and the inputs, write the job, queue it. Raises SetupError / InputError first."""
        global _active
        prefs = session.preferences()
        for problem in session.problems(prefs, weights=self.options.weights is None):
            raise problem.error()
        self.inputs.check()
        self.camera_matrix = self.inputs.camera_matrix or placement.camera_to_world(self.inputs.camera)
        settings = session.job_settings(self.options.seed, self.options.quality, prefs)
        if self.options.weights is not None:
            settings = jobs.JobSettings(**{**vars(settings), "weights": self.options.weights})
        self.job_folder = session.new_job_folder()
        jobs.write_job(self.job_folder, settings, self.inputs.image, self.inputs.masks,
                       pointmap=self.inputs.pointmap, intrinsics=self.inputs.intrinsics)
        self.request = session.client(prefs).reconstruct(self.job_folder)
        _active = self

    def step(self, timeout: float = 0.0) -> bool:
        """Pump the engine (waiting up to `timeout` s); True once the engine side is over."""
        return self.request.pump(timeout)

    @property
    def progress(self) -> tuple[str, float]:
        """(stage label, fraction of that stage) for a progress bar."""
        if self.request is None:
            return stage_label("queued"), 0.0
        if self.request.progress is None:
            return stage_label("starting" if self.request.client.info is None else "queued"), 0.0
        stage, fraction = self.request.progress
        return stage_label(stage), fraction

    @property
    def cancelling(self) -> bool:
        return self.request is not None and self.request.cancelling

    def cancel(self) -> None:
        if self.request is not None:
            self.request.cancel()

    # -- scene side ----------------------------------------------------------------------------------------------

    def finish(self, scene: bpy.types.Scene) -> tuple[bpy.types.Collection, list[bpy.types.Object]]:
        """Once `step` said so: check the results and build the scene. Raises the engine's error, or Cancelled
        (in both cases nothing was added)."""
        try:
            outcome = self.request.outcome()
            result = jobs.read_result(self.job_folder, mask_count=len(self.inputs.masks))
            self.seen_camera = result.camera
            for warning in self.request.warnings + _viewpoint_warnings(self.inputs.camera, scene, result.camera):
                self.report({"WARNING"}, warning)
            weights = outcome.get("weights") or result.weights
            provenance = Provenance(
                seed=int(self.options.seed), quality=self.options.quality, source_image=self.inputs.source_image,
                weights=str(weights.get("id", "")), weights_revision=str(weights.get("revision", "")))
            collection, objects = create_objects(
                scene, result, names=self.inputs.names, mask_hashes=[mask_hash(m) for m in self.inputs.masks],
                camera_matrix=self.camera_matrix, provenance=provenance,
                origin_at_base=self.options.origin_at_base, collection=self.options.collection)
        finally:
            self.done = True
        if not self.options.keep_job:
            shutil.rmtree(self.job_folder, ignore_errors=True)
        return collection, objects

    def run_blocking(self, scene: bpy.types.Scene, cancel: threading.Event | None = None,
                     progress: Callable[[str, float], None] | None = None,
                     ) -> tuple[bpy.types.Collection, list[bpy.types.Object]]:
        """start, step until done, finish. `cancel` (an Event) is honoured between steps; Ctrl+C cancels too."""
        self.start()
        last = None
        try:
            while not self.step(0.1):
                if cancel is not None and cancel.is_set() and not self.cancelling:
                    self.cancel()
                if progress is not None and self.progress != last:
                    last = self.progress
                    progress(*last)
        except KeyboardInterrupt:
            self.cancel()
            while not self.step(0.1):
                pass
            self.done = True
            raise
        return self.finish(scene)


def choose_seed(seed: int, randomize: bool) -> int:
    return random.randrange(0, 2**31 - 1) if randomize else int(seed)


def _viewpoint_warnings(camera: bpy.types.Object | None, scene: bpy.types.Scene, seen: dict) -> list[str]:
    """The assumption behind the placement, stated when it does not hold: the objects line up with the picture
    through `camera` only if the engine saw the picture with the camera's intrinsics (at the picture's size)."""
    if camera is None or "intrinsics" not in seen or "image_size" not in seen:
        return []
    from ..scene.camera_model import CaptureError, projection
    from ..scene.capture import camera_params

    width, height = (int(v) for v in seen["image_size"])
    try:
        proj = projection(camera_params(scene, camera, resolution=(width, height)))
    except (CaptureError, ReferenceError):
        return []
    name = camera.name
    if proj.orthographic:
        return [f"Camera '{name}' is orthographic; the objects were placed for the engine's perspective view"]
    k = np.asarray(seen["intrinsics"], np.float64)
    mismatch = max(abs(k[0, 0] / proj.fx - 1), abs(k[1, 1] / proj.fy - 1), abs(k[0, 2] - proj.cx) / width,
                   abs(k[1, 2] - proj.cy) / height)
    if mismatch <= 0.02:
        return []
    return [f"The engine saw the picture with a {k[0, 0]:.0f} px focal length; camera '{name}' has {proj.fx:.0f} px "
            f"at {width}x{height}, so the objects line up with the picture only through a camera that matches"]

