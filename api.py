"""3Dfy for scripts: blocking calls that work in the UI, in `blender -b` and in the `bpy` module.

    import bpy, importlib
    api = importlib.import_module(next(m for m in bpy.context.preferences.addons.keys() if m.endswith(".threedfy"))
                                  + ".api")
    objects = api.reconstruct("/photos/desk.png", ["/photos/desk_mask_lamp.png", "/photos/desk_mask_mug.png"],
                              camera=bpy.context.scene.camera, seed=7)
    counts = api.reconstruct_folder("/photos", save=True)   # NAME.png + NAME_mask*.png, resumable

The engine, weights, device and precision come from the add-on's preferences (as for the 3Dfy Selection button).
Failures raise the engine's errors (`EngineError`: `.kind`, `.message`, `.hint`); a cancel raises `Cancelled`.
In both cases nothing was added to the scene.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import bpy
import numpy as np

from .engine.errors import Cancelled, EngineError, InputError
from .operators import batch, runner, session
from .scene import images

__all__ = ["reconstruct", "reconstruct_folder", "EngineError", "Cancelled"]

Picture = bpy.types.Image | str | os.PathLike | np.ndarray


def reconstruct(image: Picture, masks: Sequence[Picture], camera: bpy.types.Object | None = None,
                collection: bpy.types.Collection | str | None = None, quality: str | None = None, seed: int = 0, *,
                names: Sequence[str] | None = None, origin_at_base: bool = False, pointmap: np.ndarray | None = None,
                intrinsics: np.ndarray | None = None, weights: str | None = None, scene: bpy.types.Scene | None = None,
                cancel: threading.Event | None = None, progress: Callable[[str, float], None] | None = None,
                ) -> list[bpy.types.Object]:
    """Reconstruct the masked objects of one picture and add them to the scene; returns them in mask order.

    image: a Blender image, a file path, or an (H, W, 3|4) array (row 0 = top). masks: one per object, each a
    Blender image, a file path or an (H, W) array (white/True = object; alpha for cut-outs), the picture's size.
    camera: the objects are placed as seen through it (`camera.matrix_world @ object_to_camera`); None: the
    front view from the world origin. collection: None makes a new "3Dfy NNN" collection, a string names the new
    collection, an existing collection receives the objects. quality: "fast", "default", "high" (None: the
    preferences' default). seed: the sampler seed, stored on the objects with the other settings.
    names: the objects' names (default: the mask files' or images' names, else "Object N").
    pointmap / intrinsics: (H, W, 3) camera-frame points and 3x3 pixel intrinsics when known (a camera render).
    weights: an engine weights source overriding the preferences' ("hf:REPO@REV", a folder, "random").
    cancel: an Event that stops the run (set it from another thread or from `progress`); progress(stage label,
    fraction) is called on this thread as the engine advances.

    The run is one undo step. Blocks until the objects exist.
    """
    scene = scene or bpy.context.scene
    picture, source = images.read_picture(image)
    mask_arrays, mask_names = [], []
    for mask in masks:
        array, name = images.read_mask(mask)
        mask_arrays.append(array)
        mask_names.append(name)
    if names is not None:
        if len(names) != len(mask_arrays):
            raise InputError(f"{len(names)} names for {len(mask_arrays)} masks", "give one name per mask")
        mask_names = list(names)
    prefs = session.preferences()
    options = runner.RunOptions(seed=int(seed), quality=quality or prefs.default_quality,
                                origin_at_base=origin_at_base, collection=collection, weights=weights)
    inputs = runner.RunInputs(picture, mask_arrays, mask_names, source, camera=camera, pointmap=pointmap,
                              intrinsics=intrinsics)
    run = runner.ReconstructionRun(inputs, options, report=_report)
    _collection, objects = run.run_blocking(scene, cancel=cancel, progress=progress)
    _push_undo("3Dfy")
    return objects


def reconstruct_folder(folder: str | os.PathLike, *, log_dir: str | os.PathLike | None = None,
                       camera: bpy.types.Object | None = None, quality: str | None = None, seed: int = 0,
                       origin_at_base: bool = False, save: bool = False,
                       scene: bpy.types.Scene | None = None) -> dict:
    """Reconstruct every picture of `folder` that has masks (`NAME.png` + `NAME_mask*.png`), one collection each.

    Writes a JSON log per picture in `log_dir` (default `FOLDER/3dfy_log`) and skips the pictures already done,
    so calling it again after an interruption resumes the batch. save: save the .blend after each picture (it
    must have a file path). Returns the counts {"ok", "error", "skipped", "done before"}; errors of one picture
    are logged and the batch goes on.
    """
    scene = scene or bpy.context.scene
    prefs = session.preferences()
    options = runner.RunOptions(seed=int(seed), quality=quality or prefs.default_quality,
                                origin_at_base=origin_at_base)
    job = batch.BatchRun(Path(folder), options, camera=camera, log_dir=Path(log_dir) if log_dir else None,
                         save=save, report=_report)
    counts = job.run_blocking(scene)
    _push_undo("3Dfy Folder")
    return counts


def _report(level: set, text: str) -> None:
    print(f"3Dfy {next(iter(level)).lower()}: {text}")


def _push_undo(message: str) -> None:
    if bpy.ops.ed.undo_push.poll():
        bpy.ops.ed.undo_push(message=message)
