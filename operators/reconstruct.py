"""3Dfy Selection: the selected masks of the scene's reference picture -> posed, textured objects.

Two paths on one runner (runner.py): `execute` blocks (scripts, `blender -b`, tests); `invoke` from the UI starts
the run and returns to Blender, a 0.1 s timer pumps the engine, ESC or the Cancel button stops it. The objects
are built in the last step of either path, inside the operator, so the UNDO flag makes the run one undo step;
on failure or cancel nothing is built.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

import bpy

from ..engine.errors import Cancelled, EngineError
from ..scene import images
from . import runner, session

__all__ = ["THREEDFY_OT_reconstruct_selection", "THREEDFY_OT_cancel", "report_outcome", "classes"]


def report_outcome(operator, context, level: str, message: str, hint: str = "") -> None:
    """Tell the artist: the operator report (status bar and Info log) and the sidebar's last-run box."""
    text = f"{message}. {hint}" if hint else message
    operator.report({level}, text)
    state = context.window_manager.threedfy_run
    state.level, state.message, state.hint = level, message, hint


def run_outcome(operator, context, run: runner.ReconstructionRun) -> set[str]:
    """Build the scene from a finished run and report how it went; the operator's return value."""
    state = context.window_manager.threedfy_run
    state.running = False
    try:
        collection, objects = run.finish(context.scene)
    except Cancelled:
        report_outcome(operator, context, "INFO", "Cancelled; nothing was added")
        return {"CANCELLED"}
    except EngineError as exc:
        report_outcome(operator, context, "ERROR", exc.message.rstrip("."), exc.hint)
        return {"CANCELLED"}
    except Exception as exc:  # a bug: full details to the console, one line to the artist
        traceback.print_exc(file=sys.stderr)
        report_outcome(operator, context, "ERROR", f"3Dfy failed unexpectedly ({type(exc).__name__}: {exc})",
                       "The details are in the system console; please report them")
        return {"CANCELLED"}
    count = len(objects)
    state.pointmap_source = str(run.seen_camera.get("pointmap_source", ""))
    message = f"Added {count} object{'s' if count != 1 else ''} to '{collection.name}'"
    settings = context.scene.threedfy
    if settings.pointmap_source == "ESTIMATE" and settings.create_camera:
        from ..scene.reference import create_matching_camera

        camera = create_matching_camera(context.scene, settings, run.seen_camera, run.camera_matrix)
        if camera is not None:
            message += f", seen through camera '{camera.name}' (made to match the picture)"
    report_outcome(operator, context, "INFO", message)
    return {"FINISHED"}


class THREEDFY_OT_reconstruct_selection(bpy.types.Operator):
    """Turn the selected masks of the reference picture into posed, textured objects"""

    bl_idname = "threedfy.reconstruct_selection"
    bl_label = "3Dfy Selection"
    bl_options = {"REGISTER", "UNDO"}

    _run: runner.ReconstructionRun | None = None
    _timer = None

    @classmethod
    def poll(cls, context):
        if runner.active_run() is not None:
            cls.poll_message_set("3Dfy is running; wait for it or press Cancel")
            return False
        settings = context.scene.threedfy
        if settings.image is None:
            cls.poll_message_set("The reference has no picture: capture from the camera, or choose a picture in "
                                 "the 3Dfy sidebar")
            return False
        if not any(mask.select for mask in settings.masks):
            cls.poll_message_set("Add a mask to the reference and tick its box")
            return False
        return True

    def execute(self, context):
        run = self._start(context)
        if run is None:
            return {"CANCELLED"}
        try:
            while not run.step(0.1):
                pass
        except KeyboardInterrupt:
            run.cancel()
            while not run.step(0.1):
                pass
        return run_outcome(self, context, run)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        self._run = self._start(context)
        if self._run is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._run.cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        done = self._run.step(0.0)
        state = context.window_manager.threedfy_run
        state.stage, state.fraction = self._run.progress
        if self._run.cancelling:
            state.stage = "Cancelling"
        context.workspace.status_text_set(f"3Dfy: {state.stage} {100 * state.fraction:.0f}%  (Esc to cancel)")
        _redraw(context)
        if not done:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)
        result = run_outcome(self, context, self._run)
        _redraw(context)
        return result

    def _start(self, context) -> runner.ReconstructionRun | None:
        """Gather the inputs and start a run; on a problem report it and return None."""
        settings = context.scene.threedfy
        state = context.window_manager.threedfy_run
        state.message = state.hint = state.level = state.pointmap_source = ""
        try:
            inputs = _selection_inputs(context)
            quality = settings.quality if settings.quality != "PREFERENCES" else session.preferences().default_quality
            seed = runner.choose_seed(settings.seed, settings.randomize_seed)
            run = runner.ReconstructionRun(
                inputs, runner.RunOptions(seed=seed, quality=quality, origin_at_base=settings.origin_at_base),
                report=self.report)
            run.start()
        except EngineError as exc:
            report_outcome(self, context, "ERROR", exc.message.rstrip("."), exc.hint)
            return None
        _show_blender_masks(settings, inputs)
        if settings.randomize_seed:
            settings.seed = seed  # shown in the sidebar, so "run again" reproduces this result
        state.running, state.stage, state.fraction = True, run.progress[0], 0.0
        return run


class THREEDFY_OT_cancel(bpy.types.Operator):
    """Stop the running 3Dfy Selection; nothing is added to the scene"""

    bl_idname = "threedfy.cancel"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        if runner.active_run() is None:
            cls.poll_message_set("Nothing is running")
            return False
        return True

    def execute(self, context):
        runner.active_run().cancel()
        return {"FINISHED"}


def _selection_inputs(context) -> runner.RunInputs:
    """The run's inputs from the scene's reference and its selected masks; InputError saying what to fix."""
    from ..scene import placement, reference

    settings = context.scene.threedfy
    found = reference.read_reference(context.scene, settings)
    height, width = found.picture.shape[:2]
    selected = [m for m in settings.masks if m.select]
    masks = [_mask_array(item, width, height, context) for item in selected]
    names = [m.name or (Path(m.image.name).stem if m.image else "") for m in selected]
    camera, camera_matrix = found.camera, found.camera_matrix
    if settings.pointmap_source == "ESTIMATE" and settings.create_camera:
        # A camera matching the engine's estimate is made after the run, where this viewpoint is; no warning
        # about the present camera's intrinsics, then.
        camera, camera_matrix = None, placement.camera_to_world(camera)
    return runner.RunInputs(found.picture, masks, names, found.source, camera=camera, pointmap=found.pointmap,
                            intrinsics=found.intrinsics, camera_matrix=camera_matrix)


def _mask_array(item, width: int, height: int, context):
    """(H, W) float32 mask of one list entry: its image, or its Blender Mask filled at the picture's size."""
    from ..engine.errors import InputError
    from ..scene import blender_mask

    label = item.name or "(unnamed)"
    if item.source == "BLENDER_MASK":
        if item.blender_mask is None:
            raise InputError(f"The Blender Mask of mask '{label}' was deleted", "Remove the mask, or untick it")
        return blender_mask.rasterize_mask(item.blender_mask, width, height, context.evaluated_depsgraph_get())
    if item.image is None:
        raise InputError(f"Mask '{label}' has no image (was it deleted?)", "Remove the mask, or untick it")
    try:
        return images.mask_array(item.image)
    except ValueError as exc:
        raise InputError(f"Mask '{label}': {exc}", "Reload its image, or remove the mask") from None


def _show_blender_masks(settings, inputs: runner.RunInputs) -> None:
    """Blender Masks were filled afresh for this run: show what was used in their entries' images."""
    selected = [m for m in settings.masks if m.select]
    for item, mask in zip(selected, inputs.masks):
        if item.source == "BLENDER_MASK" and item.image is not None and tuple(item.image.size) == mask.shape[::-1]:
            images.write_mask(item.image, mask)


def _redraw(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "IMAGE_EDITOR"):
                area.tag_redraw()


classes = (THREEDFY_OT_reconstruct_selection, THREEDFY_OT_cancel)
