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
    report_outcome(operator, context, "INFO",
                   f"Added {count} object{'s' if count != 1 else ''} to '{collection.name}'")
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
            cls.poll_message_set("Choose the reference picture in the 3Dfy sidebar")
            return False
        if not any(mask.select and mask.image is not None for mask in settings.masks):
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
        state.message = state.hint = state.level = ""
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
    from ..engine.errors import InputError

    settings = context.scene.threedfy
    if settings.image is None:
        raise InputError("No reference picture", "Choose it in the 3Dfy sidebar")
    try:
        picture, source = images.read_picture(settings.image)
        selected = [m for m in settings.masks if m.select and m.image is not None]
        masks = [images.mask_array(m.image) for m in selected]
    except ValueError as exc:
        raise InputError(str(exc), "Reload the image or pick another") from None
    names = [m.name or Path(m.image.name).stem for m in selected]
    return runner.RunInputs(picture, masks, names, source, camera=context.scene.camera)


def _redraw(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "IMAGE_EDITOR"):
                area.tag_redraw()


classes = (THREEDFY_OT_reconstruct_selection, THREEDFY_OT_cancel)
