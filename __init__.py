"""3Dfy: objects in a picture -> posed, textured meshes (SAM 3D Objects, run by an engine in its own process).

Registration only; the work lives in operators/, panels/, scene/ and engine/ (see each folder's README.md).
"""
from __future__ import annotations

import bpy

from .operators import batch, engine, masks, reconstruct
from .panels import preferences, sidebar
from .scene import properties

classes = (
    *properties.classes,
    preferences.THREEDFY_AddonPreferences,
    *reconstruct.classes,
    *masks.classes,
    *engine.classes,
    *batch.classes,
    *sidebar.classes,
)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    for owner, name, make in properties.attachments:
        setattr(owner, name, make())


def unregister():
    from .operators import session

    session.shutdown()
    for owner, name, _make in reversed(properties.attachments):
        delattr(owner, name)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
