"""3Dfy's data on Blender's types: the scene's reference and run settings (saved), the window's run state (not).

scene.threedfy            the reference picture, its masks (with a select box each), quality, seed, origin
window_manager.threedfy_run   progress and the last message of the current / last run; transient, so a saved
                          file never opens "running"
"""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, \
    StringProperty

__all__ = ["QUALITY_ITEMS", "THREEDFY_PG_mask", "THREEDFY_PG_settings", "THREEDFY_PG_run", "classes", "attachments"]

QUALITY_ITEMS = (
    ("fast", "Fast", "Fewer sampler steps: a quick look"),
    ("default", "Default", "The official settings"),
    ("high", "High", "More sampler steps: slower, sometimes finer"),
)


def _image_poll(self, image) -> bool:
    return image.type in ("IMAGE", "UV_TEST")


class THREEDFY_PG_mask(bpy.types.PropertyGroup):
    """One object's mask in the reference picture."""

    name: StringProperty(name="Name", description="Name of the object made from this mask")
    image: PointerProperty(name="Mask", type=bpy.types.Image, poll=_image_poll,
                           description="White on black (or an alpha cut-out), the reference's size")
    select: BoolProperty(name="Select", default=True, description="Include this mask in 3Dfy Selection")


class THREEDFY_PG_settings(bpy.types.PropertyGroup):
    image: PointerProperty(name="Picture", type=bpy.types.Image, poll=_image_poll,
                           description="The reference picture: a photo or a render of the scene's camera")
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


classes = (THREEDFY_PG_mask, THREEDFY_PG_settings, THREEDFY_PG_run)

# (type, attribute, property): attached by register(), removed by unregister().
attachments = (
    (bpy.types.Scene, "threedfy", lambda: PointerProperty(type=THREEDFY_PG_settings)),
    (bpy.types.WindowManager, "threedfy_run", lambda: PointerProperty(type=THREEDFY_PG_run)),
)
