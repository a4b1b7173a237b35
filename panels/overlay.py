"""Drawing over the Image Editor: the click-to-segment tool's clicks, box and live mask; and the reference picture,
faintly, over a mask being painted (so the artist sees what to paint).

Both run as draw handlers of the Image Editor's main region in POST_PIXEL (region pixels). Picture pixels map to
the region through the region's View2D, whose view coordinates span the image as 0..1, y up. Drawing needs a GPU
context, so nothing here runs in background mode (the `bpy` module); keep it to drawing, the logic lives in
operators/segmentation.py and scene/prompts.py.
"""
from __future__ import annotations

import bpy
import numpy as np

__all__ = ["draw_segment_tool", "add_handlers", "remove_handlers"]

ADD_COLOUR = (0.25, 1.0, 0.35, 1.0)  # positive clicks
REMOVE_COLOUR = (1.0, 0.25, 0.25, 1.0)  # negative clicks
BOX_COLOUR = (1.0, 0.85, 0.2, 1.0)
MASK_OPACITY = 0.45
PICTURE_OPACITY = 0.35  # the picture over a mask being painted
MAX_OVERLAY_SIDE = 1024  # the live mask is drawn from at most this many pixels a side
POINT_HALF_SIZE = 5.0  # region pixels

_handlers: list = []


def draw_segment_tool(tool) -> None:
    """The tool's mask, box, drag and clicks; `tool` is the running THREEDFY_OT_segment_tool."""
    import gpu

    context = bpy.context
    if context.area != tool.area or context.region.type != "WINDOW":
        return
    segment = tool.segment
    width, height = segment.size
    view2d = context.region.view2d

    def to_region(x: float, y: float) -> tuple[float, float]:
        return view2d.view_to_region(x / width, 1.0 - y / height, clip=False)

    gpu.state.blend_set("ALPHA")
    if segment.mask is not None:
        if tool.mask_texture is None or tool.mask_texture[0] is not segment.mask:
            tool.mask_texture = (segment.mask, _mask_texture(segment.mask, tool.color))
        _draw_image(tool.mask_texture[1], to_region(0, height), to_region(width, 0))
    box = segment.prompts.box
    if box is not None:
        _draw_rectangle(to_region(box[0], box[1]), to_region(box[2], box[3]), BOX_COLOUR)
    if tool.drag is not None:
        _draw_rectangle(*tool.drag, BOX_COLOUR)
    for (x, y), label in zip(segment.prompts.points, segment.prompts.labels):
        _draw_point(to_region(x, y), ADD_COLOUR if label else REMOVE_COLOUR)
    gpu.state.blend_set("NONE")


def draw_picture_over_painted_mask() -> None:
    """When the Image Editor shows a painted mask of the reference, the reference picture faintly on top."""
    import gpu

    context = bpy.context
    space, scene = context.space_data, context.scene
    settings = getattr(scene, "threedfy", None)
    if settings is None or not settings.show_picture_on_masks or settings.image is None or space.image is None:
        return
    if space.ui_mode != "PAINT" or not any(m.source == "PAINT" and m.image == space.image for m in settings.masks):
        return
    if tuple(settings.image.size) != tuple(space.image.size) or tuple(settings.image.size) == (0, 0):
        return
    view2d = context.region.view2d
    texture = gpu.texture.from_image(settings.image)
    gpu.state.blend_set("ALPHA")
    _draw_image(texture, view2d.view_to_region(0.0, 0.0, clip=False), view2d.view_to_region(1.0, 1.0, clip=False),
                opacity=PICTURE_OPACITY)
    gpu.state.blend_set("NONE")


def add_handlers() -> None:
    """The handlers that draw whatever runs (at register)."""
    if not _handlers:
        _handlers.append(bpy.types.SpaceImageEditor.draw_handler_add(
            draw_picture_over_painted_mask, (), "WINDOW", "POST_PIXEL"))


def remove_handlers() -> None:
    while _handlers:
        bpy.types.SpaceImageEditor.draw_handler_remove(_handlers.pop(), "WINDOW")


# ----------------------------------------------------------------------------------------------------------------


def _mask_texture(mask: np.ndarray, colour) -> object:
    """A GPU texture of the mask in `colour`, transparent outside (rows bottom-up, as GPU textures are)."""
    import gpu

    step = max(1, -(-max(mask.shape) // MAX_OVERLAY_SIDE))
    small = np.flipud(mask[::step, ::step]).astype(np.float32)
    rgba = np.empty((*small.shape, 4), np.float32)
    rgba[..., :3] = colour[:3]
    rgba[..., 3] = small * MASK_OPACITY
    flat = np.ascontiguousarray(rgba).reshape(-1)
    try:
        buffer = gpu.types.Buffer("FLOAT", flat.size, flat)
    except (TypeError, ValueError):  # a Blender whose Buffer does not take the buffer protocol
        buffer = gpu.types.Buffer("FLOAT", flat.size, flat.tolist())
    return gpu.types.GPUTexture((small.shape[1], small.shape[0]), format="RGBA16F", data=buffer)


def _draw_image(texture, bottom_left, top_right, opacity: float = 1.0) -> None:
    import gpu
    from gpu_extras.batch import batch_for_shader

    (x0, y0), (x1, y1) = bottom_left, top_right
    shader = gpu.shader.from_builtin("IMAGE_COLOR")
    batch = batch_for_shader(shader, "TRIS", {"pos": ((x0, y0), (x1, y0), (x1, y1), (x0, y1)),
                                               "texCoord": ((0, 0), (1, 0), (1, 1), (0, 1))},
                             indices=((0, 1, 2), (0, 2, 3)))
    shader.bind()
    shader.uniform_sampler("image", texture)
    shader.uniform_float("color", (1.0, 1.0, 1.0, opacity))
    batch.draw(shader)


def _draw_rectangle(corner_a, corner_b, colour) -> None:
    import gpu
    from gpu_extras.batch import batch_for_shader

    (x0, y0), (x1, y1) = corner_a, corner_b
    a, b, c, d = (x0, y0), (x1, y0), (x1, y1), (x0, y1)
    lines = (a, b, b, c, c, d, d, a)
    shader = gpu.shader.from_builtin("UNIFORM_COLOR")
    batch = batch_for_shader(shader, "LINES", {"pos": lines})
    gpu.state.line_width_set(2.0)
    shader.bind()
    shader.uniform_float("color", colour)
    batch.draw(shader)
    gpu.state.line_width_set(1.0)


def _draw_point(centre, colour) -> None:
    import gpu
    from gpu_extras.batch import batch_for_shader

    x, y = centre
    outline = [(x + dx, y + dy) for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    shader = gpu.shader.from_builtin("UNIFORM_COLOR")
    shader.bind()
    for half, tint in ((POINT_HALF_SIZE + 1.5, (0.0, 0.0, 0.0, 1.0)), (POINT_HALF_SIZE, colour)):
        square = [(x + (px - x) * half, y + (py - y) * half) for px, py in outline]
        batch = batch_for_shader(shader, "TRIS", {"pos": square}, indices=((0, 1, 2), (0, 2, 3)))
        shader.uniform_float("color", tint)
        batch.draw(shader)
