"""The 3Dfy sidebar, in the 3D Viewport and the Image Editor (same content): reference, masks, run, last result."""
from __future__ import annotations

import bpy

__all__ = ["THREEDFY_UL_masks", "THREEDFY_PT_view3d", "THREEDFY_PT_image", "classes"]


class THREEDFY_UL_masks(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "select", text="")
        row.prop(item, "name", text="", emboss=False)
        if item.image is None:
            row.label(text="", icon="ERROR")


def draw_sidebar(layout: bpy.types.UILayout, context) -> None:
    from ..operators import runner, session

    settings = context.scene.threedfy
    state = context.window_manager.threedfy_run

    # Set-up problems first, each with the button that fixes it.
    for problem in session.problems():
        box = layout.box()
        box.label(text=problem.message, icon="ERROR")
        box.label(text=problem.hint)
        if problem.fix:
            box.operator(problem.fix, text=problem.fix_label or "Fix")

    layout.label(text="Reference")
    layout.template_ID(settings, "image", open="image.open")
    row = layout.row()
    row.template_list("THREEDFY_UL_masks", "", settings, "masks", settings, "active_mask", rows=3)
    column = row.column(align=True)
    column.operator("threedfy.add_masks", icon="ADD", text="")
    column.operator("threedfy.remove_mask", icon="REMOVE", text="")
    if 0 <= settings.active_mask < len(settings.masks):
        layout.prop(settings.masks[settings.active_mask], "image", text="Mask")

    column = layout.column(align=True)
    column.prop(settings, "quality")
    row = column.row(align=True)
    row.prop(settings, "seed")
    row.prop(settings, "randomize_seed", text="", icon="FILE_REFRESH")
    column.prop(settings, "origin_at_base")
    camera = context.scene.camera
    layout.label(text=f"Placed through '{camera.name}'" if camera else "No camera: placed in front view",
                 icon="CAMERA_DATA")

    run = runner.active_run()
    if run is not None:
        layout.progress(text=f"{state.stage} {100 * state.fraction:.0f}%", factor=state.fraction)
        layout.operator("threedfy.cancel", icon="CANCEL")
    else:
        layout.operator("threedfy.reconstruct_selection", icon="MESH_MONKEY")
    if state.message:
        box = layout.box()
        box.label(text=state.message, icon={"ERROR": "ERROR", "WARNING": "INFO"}.get(state.level, "CHECKMARK"))
        if state.hint:
            box.label(text=state.hint)
    row = layout.row(align=True)
    row.operator("threedfy.release_gpu", icon="UNLINKED")
    row.operator("threedfy.open_preferences", icon="PREFERENCES", text="")


class THREEDFY_PT_view3d(bpy.types.Panel):
    bl_label = "3Dfy"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "3Dfy"

    def draw(self, context):
        draw_sidebar(self.layout, context)


class THREEDFY_PT_image(bpy.types.Panel):
    bl_label = "3Dfy"
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "3Dfy"

    def draw(self, context):
        draw_sidebar(self.layout, context)


classes = (THREEDFY_UL_masks, THREEDFY_PT_view3d, THREEDFY_PT_image)
