"""3Dfy's data on Blender's types: the scene's reference and run settings (saved), the window's run state (not).

scene.threedfy            the reference: picture, camera, intrinsics, where its depth comes from, and its masks
                          (name, colour, select box, source, image); quality, seed, origin
window_manager.threedfy_run   progress and the last message of the current / last run; transient, so a saved
                          file never opens "running"

A camera capture's exact pointmap and viewpoint are stored on the captured picture itself (`scene/reference.py`),
so they travel with it and are never paired with another picture.
"""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, FloatProperty, FloatVectorProperty, IntProperty, \
    PointerProperty, StringProperty

__all__ = ["QUALITY_ITEMS", "POINTMAP_SOURCES", "MASK_SOURCES", "THREEDFY_PG_mask", "THREEDFY_PG_settings",
           "THREEDFY_PG_run", "classes", "attachments"]

QUALITY_ITEMS = (
    ("fast", "Fast", "Few sampler steps, no guidance: a quick look"),
    ("default", "Default", "The official settings"),
    ("high", "High", "More sampler steps: slower, sometimes finer"),
)


POINTMAP_SOURCES = (
    ("CAPTURE", "Camera Capture", "The exact depth rendered with the picture from the camera"),
    ("ESTIMATE", "Estimate", "The engine estimates depth and camera from the picture (MoGe)"),
)

MASK_SOURCES = (  # (identifier, name, description, icon, number: saved in .blend files, never reuse one)
    ("PROMPT", "Clicks", "Segment Anything from clicks and a box on the picture", "RESTRICT_SELECT_OFF", 0),
    ("PAINT", "Painted", "Painted white on black in the Image Editor", "BRUSH_DATA", 1),
    ("BLENDER_MASK", "Blender Mask", "A Mask datablock, filled at the picture's size at every run", "MOD_MASK", 2),
    ("FILE", "Image", "A mask image: white on black, or an alpha cut-out", "IMAGE_DATA", 3),
)


def _image_poll(self, image) -> bool:
    return image.type in ("IMAGE", "UV_TEST")


def _camera_poll(self, obj) -> bool:
    return obj.type == "CAMERA"


class THREEDFY_PG_mask(bpy.types.PropertyGroup):
    """One object's mask in the reference picture."""

    name: StringProperty(name="Name", description="Name of the object made from this mask")
    image: PointerProperty(name="Mask", type=bpy.types.Image, poll=_image_poll,
                           description="White on black (or an alpha cut-out), the reference's size")
    select: BoolProperty(name="Select", default=True, description="Include this mask in 3Dfy Selection")
    source: EnumProperty(name="Source", items=MASK_SOURCES, default="FILE", description="How the mask was made")
    color: FloatVectorProperty(name="Colour", subtype="COLOR", size=3, min=0.0, max=1.0, default=(1.0, 0.5, 0.1),
                               description="The mask's colour in overlays")
    blender_mask: PointerProperty(name="Blender Mask", type=bpy.types.Mask,
                                  description="The Mask datablock this mask is filled from (at every run)")
    prompts: StringProperty(name="Prompts", options={"HIDDEN"},
                            description="The clicks and box the mask was segmented from (JSON, picture pixels)")


class THREEDFY_PG_settings(bpy.types.PropertyGroup):
    image: PointerProperty(name="Picture", type=bpy.types.Image, poll=_image_poll,
                           description="The reference picture: a photo or a render of the scene's camera")
    camera: PointerProperty(name="Camera", type=bpy.types.Object, poll=_camera_poll,
                            description="The camera the picture was seen through; the objects are placed as seen "
                                        "through it (empty: the scene's camera)")
    pointmap_source: EnumProperty(name="Depth", items=POINTMAP_SOURCES, default="ESTIMATE",
                                  description="Where the picture's depth comes from")
    use_intrinsics: BoolProperty(name="Known Camera", default=False,
                                 description="The focal length and principal point below are the picture's own "
                                             "(from a camera), so the engine is given them")
    fx: FloatProperty(name="Focal X", min=0.0, description="Focal length in pixels, across")
    fy: FloatProperty(name="Focal Y", min=0.0, description="Focal length in pixels, down")
    cx: FloatProperty(name="Centre X", description="Principal point in pixels from the left edge")
    cy: FloatProperty(name="Centre Y", description="Principal point in pixels from the top edge")
    show_picture_on_masks: BoolProperty(name="Picture over Painted Masks", default=True,
                                        description="While painting a mask in the Image Editor, show the reference "
                                                    "picture faintly over it")
    create_camera: BoolProperty(name="Create Camera", default=False,
                                description="After a run with estimated depth, add a camera that sees the picture "
                                            "as the engine estimated it (and look through it)")
    masks: CollectionProperty(type=THREEDFY_PG_mask)
    active_mask: IntProperty(name="Active Mask", default=0, min=0)
    quality: EnumProperty(name="Quality", items=(("PREFERENCES", "Preferences", "The default in the add-on's "
                                                  "preferences"),) + QUALITY_ITEMS, default="PREFERENCES")
    seed: IntProperty(name="Seed", default=0, min=0, description="Same seed, picture and masks give the same result")
    randomize_seed: BoolProperty(name="Random Seed", default=False,
                                 description="Draw a new seed for every run (it is stored on the objects)")
    origin_at_base: BoolProperty(name="Origin at Base", default=False,
                                 description="Put each object's origin at the bottom middle of its bounding box")


class THREEDFY_PG_run(bpy.types.PropertyGroup):
    running: BoolProperty(default=False)
    stage: StringProperty(default="")
    fraction: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    message: StringProperty(default="", description="The last run's outcome")
    hint: StringProperty(default="", description="What to do about it")
    level: StringProperty(default="", description="INFO, WARNING or ERROR")
    pointmap_source: StringProperty(default="", description="How the engine got the last run's depth: given, "
                                                            "estimated")


classes = (THREEDFY_PG_mask, THREEDFY_PG_settings, THREEDFY_PG_run)

# (type, attribute, property): attached by register(), removed by unregister().
attachments = (
    (bpy.types.Scene, "threedfy", lambda: PointerProperty(type=THREEDFY_PG_settings)),
    (bpy.types.WindowManager, "threedfy_run", lambda: PointerProperty(type=THREEDFY_PG_run)),
)
