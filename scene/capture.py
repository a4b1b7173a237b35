"""Render a reference from a Blender camera: the picture, an exact pointmap and the camera, scene left as it was.

`render_reference` renders the scene's active camera (or a given one) with Cycles, EEVEE or Workbench at a chosen
resolution and returns a `Reference`: the image as the artist would see it (the scene's view transform), the
pointmap in the camera frame (OpenGL: +X right, +Y up, looking down -Z; scene units) and the pinhole intrinsics,
in the layout `engine/` expects (`engine/frames.py`, `engine/intrinsics.py`; row 0 = top).

How the passes are read, per engine (each checked against analytic surfaces in tests/blender/test_capture.py):
- Every engine's Depth pass is planar depth (along the camera's -Z), 1e10 where nothing was hit.
- CYCLES and BLENDER_WORKBENCH write depth from each pixel's first sample, which goes through the pixel centre
  whatever the pixel filter or anti-aliasing: one render gives picture and depth.
- BLENDER_EEVEE_NEXT (BLENDER_EEVEE in Blender 5) accumulates depth over its jittered samples, so its depth comes
  from a second render with one (unjittered) sample.
- Depth of field moves rays off the pixel centres; with the camera's depth of field on (any engine) the depth comes
  from a second render without it (the picture keeps its blur).
All three run headless in the `bpy` module; EEVEE and Workbench need an OpenGL context (software EGL works, slowly:
EEVEE compiles its shaders on first use, a minute or two).

Pixels come back through files in a temporary folder (the Render Result cannot be read from Python): the picture
as an 8-bit PNG saved "as render" (colour-managed), loaded with `bpy.data.images`; the passes as an uncompressed
32-bit multilayer EXR, which `bpy.data.images` cannot split into passes, so it is parsed here with numpy.
Both files, the temporary image and every render setting touched are removed or restored, also on error. The
Render Result afterwards holds the last of these renders, as after any render.
"""
from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass, field

import bpy
import numpy as np

from .camera_model import CameraParams, CaptureError, Projection, pointmap_from_depth, projection

__all__ = ["ENGINES", "CaptureError", "Reference", "camera_params", "render_reference"]

EEVEE_NAMES = ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE")  # 4.2-4.5 / 5.0
ENGINES = ("CYCLES", *EEVEE_NAMES, "BLENDER_WORKBENCH")
_WORKBENCH_AA = (("OFF", 1), ("5", 5), ("8", 8), ("11", 11), ("16", 16), ("32", 32))  # render_aa -> samples


@dataclass(frozen=True, eq=False)
class Reference:
    """One captured reference, ready for the engine (arrays row 0 = top of the picture)."""

    image: np.ndarray  # (H, W, 3) uint8, display-referred through the scene's view transform
    pointmap: np.ndarray  # (H, W, 3) float32, camera frame (OpenGL), scene units; NaN where nothing was hit
    intrinsics: tuple[float, float, float, float] | None  # (fx, fy, cx, cy) px; None for an orthographic camera
    camera_matrix_world: np.ndarray  # (4, 4) float64, camera -> world as rendered (object scale removed)
    camera_name: str  # the camera object's name
    projection: Projection = field(repr=False)  # the full projection (also orthographic), see camera_model

    @property
    def orthographic(self) -> bool:
        return self.projection.orthographic


def render_reference(
    scene: bpy.types.Scene,
    camera: bpy.types.Object | None = None,
    resolution: tuple[int, int] | None = None,
    engine: str = "CYCLES",
    samples: int | None = None,
    view_layer: bpy.types.ViewLayer | None = None,
) -> Reference:
    """Render `camera` (default: the scene's active camera) and return the picture, pointmap and camera.

    resolution: (width, height) in pixels of the result; None renders the scene's resolution and percentage.
    engine: "CYCLES", "BLENDER_EEVEE_NEXT" (or "BLENDER_EEVEE") or "BLENDER_WORKBENCH".
    samples: samples of the picture (Cycles samples, EEVEE render samples, Workbench anti-aliasing rounded up to
    one of its levels); None keeps the scene's. view_layer: default the context's view layer of `scene`, else its
    first. Compositing, the sequencer, motion blur, multiview and the render region are off while capturing, so
    the picture and the pointmap line up. Raises CaptureError, before touching anything, for a missing or
    panoramic camera, an unknown engine or a bad resolution.
    """
    # 1. Check everything that can be checked before the scene is touched.
    camera = camera if camera is not None else scene.camera
    if camera is None:
        raise CaptureError(f"scene '{scene.name}' has no active camera; set one (Scene properties) or pass camera=")
    if camera.type != "CAMERA":
        raise CaptureError(f"object '{camera.name}' is a {camera.type.lower()}, not a camera; pass a camera object")
    if engine not in ENGINES:
        raise CaptureError(f"render engine {engine!r} is not supported for references; use one of {ENGINES}")
    if samples is not None and not (isinstance(samples, (int, np.integer)) and samples >= 1):
        raise CaptureError(f"samples must be a whole number of at least 1, got {samples!r}")
    view_layer = view_layer or _default_view_layer(scene)
    if scene.view_layers.get(view_layer.name) != view_layer:
        raise CaptureError(f"view layer '{view_layer.name}' is not one of scene '{scene.name}'; pass one of its own")
    params = camera_params(scene, camera, resolution, view_layer)
    proj = projection(params)
    camera_eval = _evaluated(camera, view_layer)
    matrix_world = _without_scale(np.array(camera_eval.matrix_world, dtype=np.float64))

    # 2. Render with temporary settings, read the files, put everything back.
    overrides = _Overrides()
    with tempfile.TemporaryDirectory(prefix="3dfy_capture_") as folder:
        try:
            _set_common(overrides, scene, camera, view_layer, resolution, engine)
            _set_picture_samples(overrides, scene, engine, samples)
            _render(scene, view_layer)
            picture_path = os.path.join(folder, "picture.png")
            passes_path = os.path.join(folder, "passes.exr")
            _save_picture(overrides, scene, picture_path)
            if engine in EEVEE_NAMES or camera.data.dof.use_dof:
                _set_exact_depth(overrides, scene, camera, engine)
                _render(scene, view_layer)
            _save_passes(overrides, scene, passes_path)
        finally:
            overrides.restore()
        image = _load_picture(picture_path)
        depth = _depth_channel(_read_exr(passes_path), view_layer.name)

    if image.shape[:2] != (proj.height, proj.width) or depth.shape != (proj.height, proj.width):
        raise CaptureError(
            f"the render came back {image.shape[1]}x{image.shape[0]} but the camera model expects "
            f"{proj.width}x{proj.height}; an add-on may have changed the resolution while rendering"
        )
    return Reference(
        image=image,
        pointmap=pointmap_from_depth(depth, proj, params.clip_end),
        intrinsics=proj.intrinsics,
        camera_matrix_world=matrix_world,
        camera_name=camera.name,
        projection=proj,
    )


def camera_params(
    scene: bpy.types.Scene,
    camera: bpy.types.Object,
    resolution: tuple[int, int] | None = None,
    view_layer: bpy.types.ViewLayer | None = None,
) -> CameraParams:
    """The CameraParams of `camera` (evaluated: animation and drivers applied) with the scene's render size and
    pixel aspect; `resolution` (width, height) replaces the render size at 100%."""
    data = _evaluated(camera, view_layer or _default_view_layer(scene)).data
    if data.type not in ("PERSP", "ORTHO"):
        raise CaptureError(
            f"camera '{camera.name}' is {data.type.lower()}; a reference needs a perspective or orthographic camera"
        )
    render = scene.render
    if resolution is None:
        size = dict(
            resolution_x=render.resolution_x,
            resolution_y=render.resolution_y,
            resolution_percentage=render.resolution_percentage,
        )
    else:
        if len(resolution) != 2 or not all(isinstance(n, (int, np.integer)) and 1 <= n <= 65536 for n in resolution):
            raise CaptureError(f"resolution must be (width, height) in whole pixels from 1 to 65536, got {resolution}")
        size = dict(resolution_x=int(resolution[0]), resolution_y=int(resolution[1]), resolution_percentage=100)
    return CameraParams(
        type=data.type,
        lens=data.lens,
        sensor_width=data.sensor_width,
        sensor_height=data.sensor_height,
        sensor_fit=data.sensor_fit,
        shift_x=data.shift_x,
        shift_y=data.shift_y,
        ortho_scale=data.ortho_scale,
        clip_start=data.clip_start,
        clip_end=data.clip_end,
        pixel_aspect_x=render.pixel_aspect_x,
        pixel_aspect_y=render.pixel_aspect_y,
        **size,
    )


# ----------------------------------------------------------------------------------------------------------------
# Settings: what the capture changes, and putting it back


class _Overrides:
    """Attribute changes that `restore` undoes. Restores run in the order of first change, so an enum that others
    depend on (image_settings.file_format before color_depth) comes back before them."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, object]] = []
        self._seen: set[tuple[int, str]] = set()

    def set(self, owner: object, attr: str, value: object) -> None:
        key = (owner.as_pointer(), attr)
        if key not in self._seen:
            self._seen.add(key)
            self._saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def restore(self) -> None:
        failed = []
        for owner, attr, old in self._saved:
            try:
                setattr(owner, attr, old)
            except (TypeError, ValueError, AttributeError) as error:
                failed.append(f"{attr}={old!r} ({error})")
        self._saved.clear()
        self._seen.clear()
        if failed:
            raise CaptureError("could not put back render settings after capturing: " + "; ".join(failed))


def _set_common(overrides, scene, camera, view_layer, resolution, engine) -> None:
    render = scene.render
    overrides.set(scene, "camera", camera)
    if resolution is not None:
        overrides.set(render, "resolution_x", int(resolution[0]))
        overrides.set(render, "resolution_y", int(resolution[1]))
        overrides.set(render, "resolution_percentage", 100)
    _set_engine(overrides, render, engine)
    for attr in ("use_border", "use_compositing", "use_sequencer", "use_multiview", "use_motion_blur"):
        overrides.set(render, attr, False)
    _set_passes(overrides, view_layer)


def _set_passes(overrides, view_layer) -> None:
    """Only the passes the capture reads (less to render, a smaller temporary EXR). AOVs and light groups stay."""
    overrides.set(view_layer, "use_pass_combined", True)
    overrides.set(view_layer, "use_pass_z", True)
    keep = ("use_pass_combined", "use_pass_z", "use_pass_cryptomatte_accurate")  # the last is an option, not a pass
    owners = (view_layer, getattr(view_layer, "cycles", None), getattr(view_layer, "eevee", None))
    for owner in (o for o in owners if o is not None):
        for prop in owner.bl_rna.properties:
            name = prop.identifier
            is_pass = name.startswith("use_pass_") or name in ("denoising_store_passes", "pass_debug_sample_count")
            if is_pass and name not in keep and prop.type == "BOOLEAN" and getattr(owner, name):
                overrides.set(owner, name, False)


def _set_engine(overrides, render, engine: str) -> None:
    names = EEVEE_NAMES if engine in EEVEE_NAMES else (engine,)
    for name in names:
        try:
            overrides.set(render, "engine", name)
            return
        except TypeError:
            continue
    raise CaptureError(f"render engine {engine!r} is not available in this Blender (is its add-on enabled?)")


def _set_picture_samples(overrides, scene, engine: str, samples: int | None) -> None:
    if samples is None:
        return
    if engine == "CYCLES":
        overrides.set(scene.cycles, "samples", samples)
    elif engine in EEVEE_NAMES:
        overrides.set(scene.eevee, "taa_render_samples", samples)
    else:
        level = next((name for name, n in _WORKBENCH_AA if n >= samples), _WORKBENCH_AA[-1][0])
        overrides.set(scene.display, "render_aa", level)


def _set_exact_depth(overrides, scene, camera, engine: str) -> None:
    """Settings for a depth-only render whose rays go through the pixel centres: one sample, no lens blur."""
    if camera.data.dof.use_dof:
        overrides.set(camera.data.dof, "use_dof", False)
    if engine == "CYCLES":
        overrides.set(scene.cycles, "samples", 1)
        overrides.set(scene.cycles, "use_adaptive_sampling", False)
        overrides.set(scene.cycles, "use_denoising", False)
    elif engine in EEVEE_NAMES:
        overrides.set(scene.eevee, "taa_render_samples", 1)
    else:
        overrides.set(scene.display, "render_aa", "OFF")


def _default_view_layer(scene) -> bpy.types.ViewLayer:
    context = bpy.context
    if context.scene == scene and context.view_layer is not None:
        return context.view_layer
    return scene.view_layers[0]


def _evaluated(camera, view_layer):
    depsgraph = view_layer.depsgraph
    if depsgraph is None:
        return camera
    depsgraph.update()
    return camera.evaluated_get(depsgraph)


def _without_scale(matrix: np.ndarray) -> np.ndarray:
    """Renders use the camera's matrix with each axis normalised (Blender's normalize_m4); so do the points."""
    out = matrix.copy()
    out[:3, :3] /= np.linalg.norm(out[:3, :3], axis=0, keepdims=True)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Rendering and reading the results


def _render(scene, view_layer) -> None:
    result = bpy.ops.render.render(scene=scene.name, layer=view_layer.name)
    if "FINISHED" not in result:
        raise CaptureError(f"rendering scene '{scene.name}' did not finish ({', '.join(sorted(result))})")


def _render_result() -> bpy.types.Image:
    for image in bpy.data.images:
        if image.type == "RENDER_RESULT":
            return image
    raise CaptureError("the render left no Render Result image; render once by hand to see what goes wrong")


def _save_picture(overrides, scene, path: str) -> None:
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5: the media type decides which file formats are valid
        overrides.set(settings, "media_type", "IMAGE")
    overrides.set(settings, "file_format", "PNG")
    overrides.set(settings, "color_mode", "RGB")
    overrides.set(settings, "color_depth", "8")
    overrides.set(settings, "color_management", "FOLLOW_SCENE")
    _render_result().save_render(path, scene=scene)


def _save_passes(overrides, scene, path: str) -> None:
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5: multilayer EXR is a media type of its own
        overrides.set(settings, "media_type", "MULTI_LAYER_IMAGE")
    overrides.set(settings, "file_format", "OPEN_EXR_MULTILAYER")
    overrides.set(settings, "color_depth", "32")
    overrides.set(settings, "exr_codec", "NONE")
    _render_result().save_render(path, scene=scene)


def _load_picture(path: str) -> np.ndarray:
    """The saved 8-bit PNG -> (H, W, 3) uint8, row 0 = top (Blender's pixels run bottom-up)."""
    image = bpy.data.images.load(path, check_existing=False)
    try:
        width, height = image.size
        pixels = np.empty(len(image.pixels), dtype=np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    channels = pixels.size // max(width * height, 1)
    rgb = pixels.reshape(height, width, channels)[::-1, :, :3]
    return np.round(rgb * 255.0).astype(np.uint8)


def _depth_channel(channels: dict[str, np.ndarray], layer: str) -> np.ndarray:
    name = f"{layer}.Depth.Z"
    if name in channels:
        return channels[name]
    found = [n for n in channels if n.endswith(".Depth.Z")]
    if len(found) == 1:
        return channels[found[0]]
    raise CaptureError(f"the render has no Depth pass for view layer '{layer}' (channels: {sorted(channels)})")


def _read_exr(path: str) -> dict[str, np.ndarray]:
    """An uncompressed scan-line OpenEXR file (what _save_passes writes) -> {channel name: (H, W) float32},
    row 0 = top. Only what Blender writes for us is supported: one part, compression NONE, half/float/uint."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x76\x2f\x31\x01":
        raise CaptureError(f"{path} is not an OpenEXR file")
    flags = struct.unpack_from("<i", data, 4)[0]
    if flags & 0x1200:  # tiled or multi-part
        raise CaptureError(f"{path}: tiled or multi-part EXR files are not supported")
    attributes, pos = {}, 8
    while data[pos] != 0:  # header: name\0 type\0 size value, ends with an empty name
        name_end = data.index(b"\0", pos)
        type_end = data.index(b"\0", name_end + 1)
        size = struct.unpack_from("<i", data, type_end + 1)[0]
        attributes[data[pos:name_end].decode()] = data[type_end + 5 : type_end + 5 + size]
        pos = type_end + 5 + size
    pos += 1
    if attributes["compression"][0] != 0:
        codec = attributes["compression"][0]
        raise CaptureError(f"{path}: compressed EXR files are not supported (compression {codec}); save with NONE")
    channels, chlist, at = [], attributes["channels"], 0
    while chlist[at] != 0:  # name\0, pixel type (0 uint, 1 half, 2 float), pLinear, 3 reserved, x/y sampling
        name_end = chlist.index(b"\0", at)
        pixel_type = struct.unpack_from("<i", chlist, name_end + 1)[0]
        channels.append((chlist[at:name_end].decode(), ("<u4", "<f2", "<f4")[pixel_type]))
        at = name_end + 17
    x_min, y_min, x_max, y_max = struct.unpack("<4i", attributes["dataWindow"][:16])
    width, height = x_max - x_min + 1, y_max - y_min + 1
    out = {name: np.empty((height, width), dtype=np.float32) for name, _ in channels}
    offsets = np.frombuffer(data, dtype="<u8", count=height, offset=pos)  # one chunk per scan line
    for offset in offsets:
        y = struct.unpack_from("<i", data, int(offset))[0]
        at = int(offset) + 8  # y, then the chunk's byte count
        for name, dtype in channels:  # each channel's whole scan line, channels in file (alphabetical) order
            line = np.frombuffer(data, dtype=dtype, count=width, offset=at)
            out[name][y - y_min] = line
            at += line.nbytes
    return out
