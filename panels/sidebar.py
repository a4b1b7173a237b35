"""The 3Dfy sidebar, in the 3D Viewport and the Image Editor (same content): reference, masks, run, last result."""
from __future__ import annotations

import bpy

__all__ = ["THREEDFY_UL_masks", "THREEDFY_MT_add_mask", "THREEDFY_PT_view3d", "THREEDFY_PT_image", "classes"]

DEPTH_LABELS = {"given": "Depth: given (camera capture)", "estimated": "Depth: estimated by the engine (MoGe)"}


class THREEDFY_UL_masks(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        from ..scene.properties import MASK_SOURCES

        row = layout.row(align=True)
        row.prop(item, "select", text="")
        swatch = row.row(align=True)
        swatch.ui_units_x = 0.8
        swatch.prop(item, "color", text="")
        row.prop(item, "name", text="", emboss=False)
        missing = item.blender_mask is None if item.source == "BLENDER_MASK" else item.image is None
        source_icon = next(i[3] for i in MASK_SOURCES if i[0] == item.source)
        row.label(text="", icon="ERROR" if missing else source_icon)


class THREEDFY_MT_add_mask(bpy.types.Menu):
    bl_label = "Add Mask"

    def draw(self, context):
        layout = self.layout
        layout.operator("threedfy.segment_tool", icon="RESTRICT_SELECT_OFF")
        layout.operator("threedfy.new_paint_mask", icon="BRUSH_DATA")
        if not bpy.data.masks:
            layout.operator("threedfy.add_blender_mask", icon="MOD_MASK")  # disabled; its tooltip says why
        for mask in bpy.data.masks:
            layout.operator("threedfy.add_blender_mask", icon="MOD_MASK", text=f"Blender Mask '{mask.name}'").mask = \
                mask.name
        layout.operator("threedfy.add_masks", icon="IMAGE_DATA")


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

    _draw_reference(layout, context, settings)
    _draw_masks(layout, context, settings)

    column = layout.column(align=True)
    column.prop(settings, "quality")
    row = column.row(align=True)
    row.prop(settings, "seed")
    row.prop(settings, "randomize_seed", text="", icon="FILE_REFRESH")
    column.prop(settings, "origin_at_base")

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
        if state.pointmap_source in DEPTH_LABELS:
            box.label(text=DEPTH_LABELS[state.pointmap_source])
    row = layout.row(align=True)
    row.operator("threedfy.release_gpu", icon="UNLINKED")
    row.operator("threedfy.open_preferences", icon="PREFERENCES", text="")


def _draw_reference(layout, context, settings) -> None:
    box = layout.box()
    box.label(text="Reference", icon="IMAGE_REFERENCE")
    row = box.row(align=True)
    row.operator("threedfy.capture_camera", icon="CAMERA_DATA", text="Capture")
    if getattr(context.space_data, "type", "") == "IMAGE_EDITOR":
        row.operator("threedfy.reference_from_image", icon="IMAGE_DATA", text="This Picture")
    row.operator("threedfy.reference_from_background", icon="IMAGE_BACKGROUND", text="Background")
    box.template_ID(settings, "image", open="image.open")
    box.row().prop(settings, "pointmap_source", expand=True)
    if settings.pointmap_source == "ESTIMATE":
        box.prop(settings, "create_camera")
    box.prop(settings, "camera")
    camera = settings.camera or context.scene.camera
    if settings.pointmap_source == "CAPTURE":
        box.label(text="Placed where the camera was at the capture", icon="CAMERA_DATA")
    else:
        box.label(text=f"Placed through '{camera.name}'" if camera else "No camera: placed in front view",
                  icon="CAMERA_DATA")
    if settings.use_intrinsics or settings.fx > 0:
        column = box.column(align=True)
        column.prop(settings, "use_intrinsics")
        row = column.row(align=True)
        row.enabled = settings.pointmap_source != "CAPTURE"
        row.prop(settings, "fx", text="fx")
        row.prop(settings, "fy", text="fy")
        row = column.row(align=True)
        row.enabled = settings.pointmap_source != "CAPTURE"
        row.prop(settings, "cx", text="cx")
        row.prop(settings, "cy", text="cy")


def _draw_masks(layout, context, settings) -> None:
    layout.label(text="Masks")
    row = layout.row()
    row.template_list("THREEDFY_UL_masks", "", settings, "masks", settings, "active_mask", rows=3)
    column = row.column(align=True)
    column.menu("THREEDFY_MT_add_mask", icon="ADD", text="")
    column.operator("threedfy.remove_mask", icon="REMOVE", text="")
    if 0 <= settings.active_mask < len(settings.masks):
        item = settings.masks[settings.active_mask]
        if item.source == "BLENDER_MASK":
            layout.prop(item, "blender_mask")
        else:
            layout.prop(item, "image", text="Mask")
    if getattr(context.space_data, "type", "") == "IMAGE_EDITOR":
        layout.prop(settings, "show_picture_on_masks")


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


classes = (THREEDFY_UL_masks, THREEDFY_MT_add_mask, THREEDFY_PT_view3d, THREEDFY_PT_image)
