"""The reference's mask list: add mask images (files or images already loaded), remove one.

Until the capture-and-mask tools exist, a reference is a picture plus mask images (white on black, or alpha
cut-outs) of the same size.
"""
from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import CollectionProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

__all__ = ["THREEDFY_OT_add_masks", "THREEDFY_OT_remove_mask", "classes"]


class THREEDFY_OT_add_masks(bpy.types.Operator, ImportHelper):
    """Add mask images (white object on black, or a cut-out) of the reference picture's size"""

    bl_idname = "threedfy.add_masks"
    bl_label = "Add Masks"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default="*.png;*.jpg;*.jpeg;*.tif;*.tiff;*.exr;*.bmp;*.webp", options={"HIDDEN"})
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    image: StringProperty(name="Image", description="Add this loaded image instead of files")

    def execute(self, context):
        settings = context.scene.threedfy
        if self.image:
            images = [bpy.data.images.get(self.image)]
            if images[0] is None:
                self.report({"ERROR"}, f"There is no image named '{self.image}'")
                return {"CANCELLED"}
        else:
            paths = [Path(self.directory) / f.name for f in self.files if f.name] or [Path(self.filepath)]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                self.report({"ERROR"}, f"Not a file: {missing[0]}")
                return {"CANCELLED"}
            images = [bpy.data.images.load(str(p), check_existing=True) for p in paths]
        for image in images:
            image.colorspace_settings.name = "Non-Color"
            item = settings.masks.add()
            item.image = image
            item.name = Path(image.name).stem
            item.select = True
        settings.active_mask = len(settings.masks) - 1
        self.report({"INFO"}, f"Added {len(images)} mask{'s' if len(images) != 1 else ''}")
        return {"FINISHED"}


class THREEDFY_OT_remove_mask(bpy.types.Operator):
    """Remove the active mask from the list (its image stays in the file)"""

    bl_idname = "threedfy.remove_mask"
    bl_label = "Remove Mask"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        settings = context.scene.threedfy
        if not 0 <= settings.active_mask < len(settings.masks):
            cls.poll_message_set("No mask is active")
            return False
        return True

    def execute(self, context):
        settings = context.scene.threedfy
        settings.masks.remove(settings.active_mask)
        settings.active_mask = max(0, min(settings.active_mask, len(settings.masks) - 1))
        return {"FINISHED"}


classes = (THREEDFY_OT_add_masks, THREEDFY_OT_remove_mask)
