"""3Dfy: objects in a picture -> posed, textured meshes (SAM 3D Objects, run by an engine in its own process).

Registration only; the work lives in operators/, panels/, scene/ and engine/ (see each folder's README.md).
"""
from __future__ import annotations

import bpy

from .operators import batch, engine, masks, reconstruct, reference, segment_tool
from .panels import overlay, preferences, sidebar
from .scene import properties
from .scene.reference import pack_painted_masks

classes = (
    *properties.classes,
    preferences.THREEDFY_AddonPreferences,
    *reconstruct.classes,
    *reference.classes,
    *masks.classes,
    *segment_tool.classes,
    *engine.classes,
    *batch.classes,
    *sidebar.classes,
)

# (handler list, function): appended by register(), removed by unregister().
handlers = (
    (bpy.app.handlers.save_pre, pack_painted_masks),
)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    for owner, name, make in properties.attachments:
        setattr(owner, name, make())
    for handler_list, function in handlers:
        handler_list.append(function)
    overlay.add_handlers()


def unregister():
    from .operators import session

    session.shutdown()
    overlay.remove_handlers()
    for handler_list, function in handlers:
        if function in handler_list:
            handler_list.remove(function)
    for owner, name, _make in reversed(properties.attachments):
        delattr(owner, name)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
