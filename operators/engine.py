"""Engine housekeeping: check it (handshake), release the GPU, open the logs, open 3Dfy's preferences."""
from __future__ import annotations

import bpy
from bpy.props import EnumProperty

from ..engine.client import Request
from ..engine.errors import EngineError
from . import engine_install, session

__all__ = ["THREEDFY_OT_check_engine", "THREEDFY_OT_release_gpu", "THREEDFY_OT_open_log",
           "THREEDFY_OT_open_preferences", "describe_handshake", "classes"]


def describe_handshake(info: dict) -> str:
    """'torch 2.13.0 on cuda:0 (NVIDIA RTX 4070), 9.8 of 12.0 GiB free' from a `ready` payload."""
    text = f"torch {info.get('torch')} on {info.get('device')}"
    if info.get("device_name"):
        text += f" ({info['device_name']})"
    if info.get("vram_total"):
        text += f", {info['vram_free'] / 2**30:.1f} of {info['vram_total'] / 2**30:.1f} GiB free"
    return text


def _error_text(exc: EngineError) -> str:
    return f"{exc.message.rstrip('.')}. {exc.hint}" if exc.hint else exc.message


class _EngineRequest:
    """Mix-in: an operator that sends one request and reports its answer; blocking or with a timer."""

    _timer = None
    _request: Request | None = None

    def make_request(self, context) -> Request | None:
        raise NotImplementedError

    def report_result(self, context, result: dict) -> None:
        raise NotImplementedError

    def execute(self, context):
        try:
            request = self.make_request(context)
            if request is None:
                return {"FINISHED"}
            request.wait()
        except EngineError as exc:
            self.report({"ERROR"}, _error_text(exc))
            return {"CANCELLED"}
        return self._done(context, request)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        try:
            self._request = self.make_request(context)
        except EngineError as exc:
            self.report({"ERROR"}, _error_text(exc))
            return {"CANCELLED"}
        if self._request is None:
            return {"FINISHED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        self._request.poll()
        if not self._request.finished:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._done(context, self._request)

    def _done(self, context, request: Request) -> set[str]:
        try:
            result = request.outcome()
        except EngineError as exc:
            self.report({"ERROR"}, _error_text(exc))
            return {"CANCELLED"}
        self.report_result(context, result)
        return {"FINISHED"}


class THREEDFY_OT_check_engine(_EngineRequest, bpy.types.Operator):
    """Start the engine if needed and show its device and free memory"""

    bl_idname = "threedfy.check_engine"
    bl_label = "Check Engine"

    def make_request(self, context):
        for problem in session.problems(weights=False):
            raise problem.error()
        return session.client().submit("status")

    def report_result(self, context, result):
        self.report({"INFO"}, f"Engine ready: {describe_handshake(result)}")


class THREEDFY_OT_release_gpu(_EngineRequest, bpy.types.Operator):
    """Unload the model and give its GPU memory back (the next run loads it again)"""

    bl_idname = "threedfy.release_gpu"
    bl_label = "Release GPU"

    def make_request(self, context):
        client = session.current_client()
        request = client.release() if client is not None else None
        if request is None:
            self.report({"INFO"}, "The engine is not running; nothing to release")
        return request

    def report_result(self, context, result):
        free = result.get("vram_free")
        self.report({"INFO"}, "Released the GPU" + (f": {free / 2**30:.1f} GiB free" if free else ""))


class THREEDFY_OT_open_log(bpy.types.Operator):
    """Open a 3Dfy log in the system's text viewer"""

    bl_idname = "threedfy.open_log"
    bl_label = "Open Log"
    bl_options = {"INTERNAL"}

    which: EnumProperty(items=(("ENGINE", "Engine", "What the engine printed"),
                               ("INSTALL", "Install", "The last engine install")))

    def execute(self, context):
        path = session.user_dir("logs") / ("engine.log" if self.which == "ENGINE" else "install.log")
        if not path.exists():
            self.report({"WARNING"}, f"There is no log yet at {path}")
            return {"CANCELLED"}
        bpy.ops.wm.path_open(filepath=str(path))
        return {"FINISHED"}


class THREEDFY_OT_open_preferences(bpy.types.Operator):
    """Open 3Dfy's preferences (engine and weights)"""

    bl_idname = "threedfy.open_preferences"
    bl_label = "3Dfy Preferences"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        context.preferences.active_section = "ADDONS"
        context.window_manager.addon_search = "3Dfy"
        if not bpy.app.background:
            bpy.ops.screen.userpref_show()
        return {"FINISHED"}


classes = (*engine_install.classes, THREEDFY_OT_check_engine, THREEDFY_OT_release_gpu,
           THREEDFY_OT_open_log, THREEDFY_OT_open_preferences)
