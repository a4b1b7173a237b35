"""Click to Segment: the Image Editor tool that makes a mask with Segment Anything, live.

Click adds a point on the object, Shift-click a point that is not the object, a drag draws a box; Backspace (or
Ctrl+Z) takes back the last one, Enter keeps the mask as a new entry of the mask list, Esc or right-click cancels.
The mask of the current clicks is drawn over the picture as it comes back from the engine (panels/overlay.py).

This operator only translates events; the session (operators/segmentation.py: requests, answers) and the prompts
(scene/prompts.py: bounds, undo) hold the logic and are tested without an event loop. For scripts, the blocking
`threedfy.add_prompt_mask` does the same from a list of clicks.
"""
from __future__ import annotations

import bpy
from bpy.props import StringProperty

from ..engine.errors import EngineError

__all__ = ["THREEDFY_OT_segment_tool", "classes"]

HELP = "Click: object · Shift-click: not the object · Drag: box · Backspace: undo · Enter: keep · Esc: cancel"


class THREEDFY_OT_segment_tool(bpy.types.Operator):
    """Click on an object in the reference picture to mask it with Segment Anything (Enter keeps the mask)"""

    bl_idname = "threedfy.segment_tool"
    bl_label = "Click to Segment"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Name", description="The object's name (empty: Object N)")

    @classmethod
    def poll(cls, context):
        if getattr(context.space_data, "type", "") != "IMAGE_EDITOR":
            cls.poll_message_set("Start it from the Image Editor's 3Dfy sidebar")
            return False
        if context.scene.threedfy.image is None:
            cls.poll_message_set("Choose the reference picture first (capture, or a picture)")
            return False
        return True

    def execute(self, context):
        self.report({"ERROR"}, "Click to Segment is interactive; from a script use bpy.ops.threedfy.add_prompt_mask")
        return {"CANCELLED"}

    def invoke(self, context, event):
        from ..panels import overlay
        from ..scene import mask_list, reference
        from .segmentation import SegmentSession

        settings = context.scene.threedfy
        try:
            picture = reference.read_picture(settings)
            self.segment = SegmentSession.start(picture)
        except EngineError as exc:
            self.report({"ERROR"}, f"{exc.message.rstrip('.')}. {exc.hint}" if exc.hint else exc.message)
            return {"CANCELLED"}
        self.area = context.area
        self.region = next(r for r in context.area.regions if r.type == "WINDOW")
        self.color = mask_list.next_color(len(settings.masks))
        self.mask_texture = None  # (mask it shows, GPU texture), made while drawing
        self.drag = None  # ((x, y), (x, y)) region pixels of a box being drawn
        self._press = None  # (region x, y, shift) of the press that may become a click or a box
        self._keep = False  # Enter was pressed: keep the mask once it answers the last clicks
        context.space_data.image = settings.image
        context.space_data.ui_mode = "VIEW"
        self._draw = bpy.types.SpaceImageEditor.draw_handler_add(overlay.draw_segment_tool, (self,), "WINDOW",
                                                                 "POST_PIXEL")
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        self._status(context)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        from ..scene.prompts import DRAG_THRESHOLD

        if event.type == "TIMER":
            if self.segment.pump(0.0):
                self._status(context)
                self.area.tag_redraw()
            if self._keep and self.segment.up_to_date:
                return self._finish(context)
            return {"PASS_THROUGH"}
        x, y = event.mouse_x - self.region.x, event.mouse_y - self.region.y
        inside = _over(self.region, event) and not any(
            _over(r, event) for r in getattr(self.area, "regions", ()) if r.type != "WINDOW")  # sidebar, header
        if event.type == "LEFTMOUSE" and event.value == "PRESS" and inside:
            self._press = (x, y, event.shift)
            return {"RUNNING_MODAL"}
        if event.type == "MOUSEMOVE" and self._press is not None:
            if max(abs(x - self._press[0]), abs(y - self._press[1])) >= DRAG_THRESHOLD:
                self.drag = (self._press[:2], (x, y))
                self.area.tag_redraw()
            return {"RUNNING_MODAL"}
        if event.type == "LEFTMOUSE" and event.value == "RELEASE" and self._press is not None:
            press, self._press, drag, self.drag = self._press, None, self.drag, None
            try:
                if drag is not None:
                    self.segment.prompts.set_box(*self._pixel(*drag[0]), *self._pixel(*drag[1]))
                else:
                    self.segment.prompts.add_point(*self._pixel(*press[:2]), positive=not press[2])
            except EngineError as exc:
                self.report({"WARNING"}, exc.message)
            self.segment.pump(0.0)
            self._status(context)
            self.area.tag_redraw()
            return {"RUNNING_MODAL"}
        if event.value != "PRESS":
            return {"PASS_THROUGH"}
        if event.type == "BACK_SPACE" or (event.type == "Z" and (event.ctrl or event.oskey)):
            self.segment.prompts.undo()
            self.segment.pump(0.0)
            self._status(context)
            self.area.tag_redraw()
            return {"RUNNING_MODAL"}
        if event.type in ("RET", "NUMPAD_ENTER"):
            self._keep = True
            return self._finish(context) if self.segment.up_to_date else {"RUNNING_MODAL"}
        if event.type in ("ESC", "RIGHTMOUSE"):
            self._end(context)
            self.report({"INFO"}, "Click to Segment cancelled; no mask was added")
            return {"CANCELLED"}
        return {"PASS_THROUGH"}

    def _pixel(self, x: float, y: float) -> tuple[float, float]:
        """Region pixels -> picture pixels (x right, y down)."""
        from ..scene.prompts import pixel_from_view

        return pixel_from_view(*self.region.view2d.region_to_view(x, y), *self.segment.size)

    def _finish(self, context):
        """Enter, once the mask answers the last clicks: keep it, or say why not and go on clicking."""
        from ..scene import mask_list

        self._keep = False
        try:
            mask = self.segment.result()
        except EngineError as exc:
            self.report({"WARNING"}, f"{exc.message.rstrip('.')}. {exc.hint}" if exc.hint else exc.message)
            return {"RUNNING_MODAL"}
        item = mask_list.add_mask(context.scene.threedfy, "PROMPT", name=self.name, mask=mask,
                                  prompts=self.segment.prompts.to_json())  # its colour is the one drawn (`color`)
        self._end(context)
        self.report({"INFO"}, f"Added '{item.name}' ({int(mask.sum())} pixels)")
        return {"FINISHED"}

    def _end(self, context) -> None:
        context.window_manager.event_timer_remove(self._timer)
        bpy.types.SpaceImageEditor.draw_handler_remove(self._draw, "WINDOW")
        context.workspace.status_text_set(None)
        self.segment.close()
        self.area.tag_redraw()

    def _status(self, context) -> None:
        segment = self.segment
        if segment.error is not None:
            state = segment.error.message
        elif not segment.up_to_date:
            state = "segmenting…"
        elif segment.mask is not None:
            state = f"{int(segment.mask.sum())} px, score {segment.score:.2f}"
        else:
            state = "click on the object"
        context.workspace.status_text_set(f"3Dfy: {state}   |   {HELP}")


def _over(region, event) -> bool:
    """The mouse is over `region` (regions that overlap the main one, like the sidebar, count as theirs)."""
    return region.x <= event.mouse_x < region.x + region.width and region.y <= event.mouse_y < region.y + region.height


classes = (THREEDFY_OT_segment_tool,)
