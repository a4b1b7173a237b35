"""The reference's mask list: add masks (image files or loaded images, a new image to paint, a Blender Mask,
Segment Anything from clicks), remove one.

Every mask has the reference picture's size; an add that cannot make one reports why and changes nothing. The
interactive click tool is segment_tool.py; `add_prompt_mask` here is its blocking twin for scripts.
"""
from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import CollectionProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from ..engine.errors import EngineError

__all__ = ["THREEDFY_OT_add_masks", "THREEDFY_OT_remove_mask", "THREEDFY_OT_new_paint_mask",
           "THREEDFY_OT_add_blender_mask", "THREEDFY_OT_add_prompt_mask", "classes"]


class THREEDFY_OT_add_masks(bpy.types.Operator, ImportHelper):
    """Add mask images (white object on black, or a cut-out) of the reference picture's size"""

    bl_idname = "threedfy.add_masks"
    bl_label = "Add Mask Images"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default="*.png;*.jpg;*.jpeg;*.tif;*.tiff;*.exr;*.bmp;*.webp", options={"HIDDEN"})
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    image: StringProperty(name="Image", description="Add this loaded image instead of files")

    def execute(self, context):
        from ..scene import mask_list

        settings = context.scene.threedfy
        existing = set(bpy.data.images)
        if self.image:
            images_ = [bpy.data.images.get(self.image)]
            if images_[0] is None:
                self.report({"ERROR"}, f"There is no image named '{self.image}'")
                return {"CANCELLED"}
        else:
            paths = [Path(self.directory) / f.name for f in self.files if f.name] or [Path(self.filepath)]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                self.report({"ERROR"}, f"Not a file: {missing[0]}")
                return {"CANCELLED"}
            images_ = [bpy.data.images.load(str(p), check_existing=True) for p in paths]
        problem = _size_problem(settings, images_)
        if problem:
            for image in set(images_) - existing:  # loaded for nothing: take them back
                bpy.data.images.remove(image)
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        for image in images_:
            if image.source == "FILE" and not image.is_dirty:  # a generated or painted image would lose its pixels
                image.colorspace_settings.name = "Non-Color"
            mask_list.add_mask(settings, "FILE", name=Path(image.name).stem, image=image)
        self.report({"INFO"}, f"Added {len(images_)} mask{'s' if len(images_) != 1 else ''}")
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


class THREEDFY_OT_new_paint_mask(bpy.types.Operator):
    """Add a black mask of the picture's size and paint the object white on it in the Image Editor"""

    bl_idname = "threedfy.new_paint_mask"
    bl_label = "Paint a Mask"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Name", description="The object's name (empty: Object N)")

    @classmethod
    def poll(cls, context):
        return _poll_reference(cls, context)

    def execute(self, context):
        import numpy as np

        from ..scene import mask_list

        settings = context.scene.threedfy
        size = _reference_size(self, settings)
        if size is None:
            return {"CANCELLED"}
        width, height = size
        item = mask_list.add_mask(settings, "PAINT", name=self.name, mask=np.zeros((height, width), np.float32))
        space = context.space_data
        if getattr(space, "type", "") == "IMAGE_EDITOR":
            space.image = item.image
            space.ui_mode = "PAINT"
        self.report({"INFO"}, f"Paint '{item.name}' white in image '{item.image.name}'")
        return {"FINISHED"}


class THREEDFY_OT_add_blender_mask(bpy.types.Operator):
    """Add a mask filled from a Blender Mask datablock at the picture's size (again at every run, so edits count)"""

    bl_idname = "threedfy.add_blender_mask"
    bl_label = "Add Blender Mask"
    bl_options = {"REGISTER", "UNDO"}

    mask: StringProperty(name="Mask", description="The Mask datablock (empty: the Image Editor's, or the only one)")
    name: StringProperty(name="Name", description="The object's name (empty: the Mask's name)")

    @classmethod
    def poll(cls, context):
        if not bpy.data.masks:
            cls.poll_message_set("There is no Blender Mask: draw one in the Image Editor's Mask mode")
            return False
        return _poll_reference(cls, context)

    def execute(self, context):
        from ..scene import blender_mask, mask_list

        settings = context.scene.threedfy
        source = self._mask(context)
        size = _reference_size(self, settings) if source is not None else None
        if size is None:
            return {"CANCELLED"}
        width, height = size
        mask = blender_mask.rasterize_mask(source, width, height, context.evaluated_depsgraph_get())
        if not (mask > 0.5).any():
            self.report({"ERROR"}, f"Mask '{source.name}' covers no pixel of the picture. Draw it over the picture "
                                   "in the Image Editor's Mask mode (filled, closed splines)")
            return {"CANCELLED"}
        item = mask_list.add_mask(settings, "BLENDER_MASK", name=self.name or source.name, mask=mask,
                                  blender_mask=source)
        self.report({"INFO"}, f"Added '{item.name}' from Mask '{source.name}'")
        return {"FINISHED"}

    def _mask(self, context) -> bpy.types.Mask | None:
        if self.mask:
            found = bpy.data.masks.get(self.mask)
            if found is None:
                self.report({"ERROR"}, f"There is no Blender Mask named '{self.mask}'")
            return found
        space_mask = getattr(context.space_data, "mask", None)
        if space_mask is not None:
            return space_mask
        if len(bpy.data.masks) == 1:
            return bpy.data.masks[0]
        self.report({"ERROR"}, "Say which Blender Mask to add (there are several), or show it in the Image Editor")
        return None


class THREEDFY_OT_add_prompt_mask(bpy.types.Operator):
    """Add a mask that Segment Anything makes from clicks and a box on the picture (blocking; for scripts)"""

    bl_idname = "threedfy.add_prompt_mask"
    bl_label = "Add Mask from Clicks"
    bl_options = {"REGISTER", "UNDO"}

    prompts: StringProperty(
        name="Prompts", description='JSON in picture pixels (x right, y down, from the top-left corner): {"points": '
                                    '[[x, y], ...], "labels": [1 object | 0 not, ...], "box": [x0, y0, x1, y1]}')
    name: StringProperty(name="Name", description="The object's name (empty: Object N)")

    @classmethod
    def poll(cls, context):
        return _poll_reference(cls, context)

    def execute(self, context):
        from ..scene import mask_list, reference
        from ..scene.prompts import Prompts
        from .segmentation import SegmentSession

        settings = context.scene.threedfy
        try:
            picture = reference.read_picture(settings)
            prompts = Prompts.from_json(self.prompts or "{}", picture.shape[1], picture.shape[0])
            prompts.check()
            segment = SegmentSession.start(picture, prompts)
            try:
                mask = segment.result()
            finally:
                segment.close()
        except EngineError as exc:
            self.report({"ERROR"}, f"{exc.message.rstrip('.')}. {exc.hint}" if exc.hint else exc.message)
            return {"CANCELLED"}
        item = mask_list.add_mask(settings, "PROMPT", name=self.name, mask=mask, prompts=prompts.to_json())
        self.report({"INFO"}, f"Added '{item.name}' ({int(mask.sum())} pixels)")
        return {"FINISHED"}


def _poll_reference(cls, context) -> bool:
    if context.scene.threedfy.image is None:
        cls.poll_message_set("Choose the reference picture first (capture, or a picture)")
        return False
    return True


def _reference_size(operator, settings) -> tuple[int, int] | None:
    """(width, height) of the reference picture, or None after reporting why there is none."""
    from ..scene import images

    if settings.image is None:
        operator.report({"ERROR"}, "The reference has no picture (was it deleted?). Capture from the camera, or "
                                   "choose a picture")
        return None
    try:
        return images.image_size(settings.image)
    except ValueError as exc:
        operator.report({"ERROR"}, f"The reference picture: {exc}")
        return None


def _size_problem(settings, images_: list[bpy.types.Image]) -> str:
    """Why these mask images do not fit the reference picture ("" when they do, or there is no picture yet)."""
    if settings.image is None or tuple(settings.image.size) == (0, 0):
        return ""
    width, height = settings.image.size
    for image in images_:
        if tuple(image.size) != (width, height):
            return (f"Mask '{image.name}' is {image.size[0]}x{image.size[1]} but the picture is {width}x{height}. "
                    "Masks must have the picture's size")
    return ""


classes = (THREEDFY_OT_add_masks, THREEDFY_OT_remove_mask, THREEDFY_OT_new_paint_mask, THREEDFY_OT_add_blender_mask,
           THREEDFY_OT_add_prompt_mask)
