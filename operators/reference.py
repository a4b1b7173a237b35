"""Making the reference: capture the active camera, use the picture open in the Image Editor, or use the active
camera's background image. The work is in scene/reference.py (and scene/capture.py for the render)."""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from ..engine.errors import InputError

__all__ = ["THREEDFY_OT_capture_camera", "THREEDFY_OT_reference_from_image", "THREEDFY_OT_reference_from_background",
           "classes"]

CAPTURE_ENGINES = (
    ("SCENE", "Scene's Engine", "The scene's render engine when it is Cycles, EEVEE or Workbench, else Cycles"),
    ("CYCLES", "Cycles", ""),
    ("EEVEE", "EEVEE", "Renders depth a second time, with one sample"),
    ("BLENDER_WORKBENCH", "Workbench", "Fast; flat shading"),
)


class THREEDFY_OT_capture_camera(bpy.types.Operator):
    """Render the active camera with its depth: the picture becomes the reference, with exact depth and camera"""

    bl_idname = "threedfy.capture_camera"
    bl_label = "Capture Camera"
    bl_options = {"REGISTER", "UNDO"}

    engine: EnumProperty(name="Engine", items=CAPTURE_ENGINES, default="SCENE")
    samples: IntProperty(name="Samples", default=0, min=0, description="Samples of the picture (0: the scene's)")
    width: IntProperty(name="Width", default=0, min=0, description="Pixels across (0: the scene's render size)")
    height: IntProperty(name="Height", default=0, min=0, description="Pixels down (0: the scene's render size)")

    @classmethod
    def poll(cls, context):
        if context.scene.camera is None:
            cls.poll_message_set("The scene has no active camera")
            return False
        return True

    def execute(self, context):
        from ..scene import capture, reference

        scene = context.scene
        camera = scene.camera
        if bool(self.width) != bool(self.height):
            self.report({"ERROR"}, "Give both Width and Height, or neither (the scene's render size)")
            return {"CANCELLED"}
        resolution = (self.width, self.height) if self.width else None
        try:
            captured = capture.render_reference(scene, camera, resolution=resolution, engine=self._engine(scene),
                                                samples=self.samples or None)
        except capture.CaptureError as exc:
            self.report({"ERROR"}, f"Cannot capture '{camera.name}': {exc}")
            return {"CANCELLED"}
        image = reference.use_capture(scene.threedfy, captured, camera)
        _show_in_image_editor(context, image)
        height, width = captured.image.shape[:2]
        self.report({"INFO"}, f"Captured '{camera.name}' at {width}x{height}: picture, exact depth and camera")
        return {"FINISHED"}

    def _engine(self, scene) -> str:
        from ..scene.capture import EEVEE_NAMES, ENGINES

        if self.engine == "EEVEE":
            return EEVEE_NAMES[0]
        if self.engine != "SCENE":
            return self.engine
        return scene.render.engine if scene.render.engine in ENGINES else "CYCLES"


class THREEDFY_OT_reference_from_image(bpy.types.Operator):
    """Use the picture open in the Image Editor as the reference; the engine estimates its depth and camera"""

    bl_idname = "threedfy.reference_from_image"
    bl_label = "Use This Picture"
    bl_options = {"REGISTER", "UNDO"}

    image: StringProperty(name="Image", description="The image to use (empty: the Image Editor's)")
    create_camera: BoolProperty(name="Create Camera", default=False,
                                description="After the run, add a camera that sees the picture as the engine "
                                            "estimated it")

    @classmethod
    def poll(cls, context):
        space = context.space_data
        if getattr(space, "type", "") == "IMAGE_EDITOR" and space.image is None:
            cls.poll_message_set("Open a picture in the Image Editor first")
            return False
        return True

    def execute(self, context):
        from ..scene import reference

        image = self._image(context)
        if image is None:
            return {"CANCELLED"}
        try:
            reference.use_picture(context.scene.threedfy, image, create_camera=self.create_camera)
        except InputError as exc:
            self.report({"ERROR"}, f"{exc.message}. {exc.hint}")
            return {"CANCELLED"}
        depth = "captured depth" if context.scene.threedfy.pointmap_source == "CAPTURE" else "estimated depth"
        self.report({"INFO"}, f"The reference is '{image.name}' ({depth})")
        return {"FINISHED"}

    def _image(self, context) -> bpy.types.Image | None:
        if self.image:
            image = bpy.data.images.get(self.image)
            if image is None:
                self.report({"ERROR"}, f"There is no image named '{self.image}'")
            return image
        image = getattr(context.space_data, "image", None)
        if image is None:
            self.report({"ERROR"}, "No image is open in the Image Editor; open one, or name it")
        return image


class THREEDFY_OT_reference_from_background(bpy.types.Operator):
    """Use the active camera's background image as the reference, seen through that camera"""

    bl_idname = "threedfy.reference_from_background"
    bl_label = "Use Camera Background"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        if context.scene.camera is None:
            cls.poll_message_set("The scene has no active camera")
            return False
        return True

    def execute(self, context):
        from ..scene import reference

        camera = context.scene.camera
        try:
            warnings = reference.use_background(context.scene, context.scene.threedfy, camera)
        except InputError as exc:
            self.report({"ERROR"}, f"{exc.message}. {exc.hint}")
            return {"CANCELLED"}
        for warning in warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, f"The reference is '{context.scene.threedfy.image.name}', seen through "
                              f"'{camera.name}' (estimated depth)")
        return {"FINISHED"}


def _show_in_image_editor(context, image: bpy.types.Image) -> None:
    """Show `image` in the Image Editor the operator was started from (if it was)."""
    space = context.space_data
    if getattr(space, "type", "") == "IMAGE_EDITOR":
        space.image = image


classes = (THREEDFY_OT_capture_camera, THREEDFY_OT_reference_from_image, THREEDFY_OT_reference_from_background)
