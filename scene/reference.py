"""The reference: the picture objects are made from, with what is known of its camera and its depth.

Three ways to make one (the operators in operators/reference.py call these):
- `use_capture`: a camera capture (`capture.render_reference`). The rendered picture becomes a packed image that
  carries, as ID properties, the exact pointmap and the camera's matrix at the moment of the capture; the
  intrinsics are the camera's; depth CAPTURE, so the engine is given the pointmap and estimates nothing.
- `use_picture`: a photo. Depth ESTIMATE (MoGe, in the engine), intrinsics unknown; with "create camera" a camera
  matching the engine's estimate is added after the run (`create_matching_camera`).
- `use_background`: the active camera's background image, a photo matched to that camera: intrinsics from the
  camera at the image's size and framing, depth ESTIMATE.

`read_reference` gathers what a run needs and raises InputError saying what to do when something is missing or
does not fit: a deleted picture, a picture without pixels, captured depth of another size.
"""
from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np
from mathutils import Matrix

from ..engine.errors import InputError
from . import images
from .camera_model import CaptureError, background_intrinsics, camera_for_intrinsics, projection
from .capture import camera_params

__all__ = ["POINTMAP_KEY", "CAPTURE_KEY", "CREATED_FOR_KEY", "ReferenceInputs", "use_capture", "use_picture",
           "use_background", "read_picture", "read_reference", "read_capture", "create_matching_camera",
           "pack_painted_masks"]

POINTMAP_KEY = "threedfy_pointmap"  # on a captured picture: (H·W·3) float32, camera frame, NaN = no surface
CAPTURE_KEY = "threedfy_capture"  # on a captured picture: {camera, matrix (16, row-major), intrinsics, size}
CREATED_FOR_KEY = "threedfy_camera_for"  # on a camera made by create_matching_camera: the picture's name


@dataclass
class ReferenceInputs:
    """What a run takes from the reference."""

    picture: np.ndarray  # (H, W, 3) uint8, row 0 = top
    source: str  # the picture's file path or name, stored on the objects
    camera: bpy.types.Object | None  # the objects are placed as seen through it (None: front view)
    camera_matrix: Matrix | None = None  # camera -> world to place with, instead of the camera's current one
    pointmap: np.ndarray | None = None  # (H, W, 3) float32, camera frame (OpenGL)
    intrinsics: np.ndarray | None = None  # (3, 3) pixels


# ----------------------------------------------------------------------------------------------------------------
# Making a reference


def use_capture(settings, captured, camera: bpy.types.Object) -> bpy.types.Image:
    """Make a camera capture (`capture.Reference`) the reference: a new packed picture holding the pointmap."""
    height, width = captured.image.shape[:2]
    image = images.new_picture_image(f"{camera.name} Reference", captured.image)
    image[POINTMAP_KEY] = np.ascontiguousarray(captured.pointmap, np.float32).reshape(-1)
    image[CAPTURE_KEY] = {
        "camera": camera.name, "size": [width, height],
        "matrix": [float(v) for v in np.asarray(captured.camera_matrix_world, np.float64).reshape(-1)],
        "intrinsics": [float(v) for v in captured.intrinsics] if captured.intrinsics is not None else [],
    }
    settings.image = image
    settings.camera = camera
    settings.pointmap_source = "CAPTURE"
    _set_intrinsics(settings, captured.intrinsics)
    return image


def use_picture(settings, image: bpy.types.Image, create_camera: bool = False) -> None:
    """Make a photo the reference: the engine estimates its depth (and camera). Raises InputError for an image
    without pixels, before changing anything."""
    _picture_size(image)
    captured = image.get(CAPTURE_KEY)  # picking a captured picture again brings its capture back
    camera = bpy.data.objects.get(str(captured["camera"])) if captured is not None else None
    settings.image = image
    settings.camera = camera if camera is not None and camera.type == "CAMERA" else None
    settings.pointmap_source = "CAPTURE" if captured is not None else "ESTIMATE"
    settings.create_camera = create_camera
    _set_intrinsics(settings, tuple(captured["intrinsics"]) or None if captured is not None else None)


def use_background(scene: bpy.types.Scene, settings, camera: bpy.types.Object) -> list[str]:
    """Make `camera`'s (first visible) background image the reference, with the camera's intrinsics at the image's
    size; returns warnings about framing the intrinsics do not model. Raises InputError before changing anything."""
    if camera is None or camera.type != "CAMERA":
        raise InputError("There is no active camera", "Make a camera the scene's camera first")
    background = next((b for b in camera.data.background_images
                       if b.source == "IMAGE" and b.image is not None and b.show_background_image), None)
    if background is None:
        raise InputError(f"Camera '{camera.name}' has no background image",
                         "Add one in the camera's properties (Background Images), or use another reference")
    image = background.image
    width, height = _picture_size(image)
    try:
        render = projection(camera_params(scene, camera))
        intrinsics = background_intrinsics(render, (scene.render.pixel_aspect_x, scene.render.pixel_aspect_y),
                                           width, height, background.frame_method)
    except CaptureError as exc:
        raise InputError(f"Camera '{camera.name}': {exc}", "Use a perspective camera") from None
    warnings = []
    if tuple(background.offset) != (0.0, 0.0) or background.scale != 1.0 or background.rotation != 0.0 \
            or background.use_flip_x or background.use_flip_y:
        warnings.append(f"The background image of '{camera.name}' is moved, scaled, rotated or flipped; its "
                        "intrinsics assume it is not")
    settings.image = image
    settings.camera = camera
    settings.pointmap_source = "ESTIMATE"
    _set_intrinsics(settings, intrinsics)
    return warnings


# ----------------------------------------------------------------------------------------------------------------
# Reading it for a run


def read_picture(settings) -> np.ndarray:
    """The reference picture ((H, W, 3) uint8, row 0 = top); InputError when it was deleted or has no pixels."""
    if settings.image is None:
        raise InputError("The reference has no picture (was it deleted?)",
                         "Capture from the camera, or choose a picture in the 3Dfy sidebar")
    _picture_size(settings.image)
    return images.read_picture(settings.image)[0]


def read_reference(scene: bpy.types.Scene, settings) -> ReferenceInputs:
    """The picture, camera, pointmap and intrinsics of the scene's reference, checked; InputError otherwise."""
    picture = read_picture(settings)
    image = settings.image
    height, width = picture.shape[:2]
    source = image.filepath or image.name
    camera = settings.camera or scene.camera
    if settings.pointmap_source == "CAPTURE":
        pointmap, intrinsics, matrix = read_capture(image)
        if pointmap.shape[:2] != (height, width):
            raise InputError(f"The captured depth is {pointmap.shape[1]}x{pointmap.shape[0]} but picture "
                             f"'{image.name}' is {width}x{height}", "Capture from the camera again")
        k = None if intrinsics is None else _matrix_k(intrinsics)
        return ReferenceInputs(picture, source, settings.camera, Matrix(matrix.tolist()), pointmap, k)
    k = None
    if settings.use_intrinsics:
        if not (settings.fx > 0 and settings.fy > 0):
            raise InputError("The reference's focal length must be positive", "Fix it in the 3Dfy sidebar, or "
                             "untick Known Camera to let the engine estimate it")
        k = _matrix_k((settings.fx, settings.fy, settings.cx, settings.cy))
    return ReferenceInputs(picture, source, camera, None, None, k)


def read_capture(image: bpy.types.Image) -> tuple[np.ndarray, tuple[float, ...] | None, np.ndarray]:
    """(pointmap (H, W, 3) float32, intrinsics (fx, fy, cx, cy) or None, camera matrix (4, 4)) stored on a captured
    picture; InputError when the picture holds none."""
    if CAPTURE_KEY not in image or POINTMAP_KEY not in image:
        raise InputError(f"Picture '{image.name}' holds no camera capture",
                         "Capture from the camera again, or set Depth to Estimate")
    info = image[CAPTURE_KEY]
    width, height = (int(v) for v in info["size"])
    flat = np.frombuffer(memoryview(image[POINTMAP_KEY]), np.float32)
    if flat.size != width * height * 3:
        raise InputError(f"The captured depth of '{image.name}' is damaged ({flat.size} values for {width}x{height})",
                         "Capture from the camera again")
    intrinsics = tuple(float(v) for v in info["intrinsics"]) or None
    matrix = np.array(list(info["matrix"]), np.float64).reshape(4, 4)
    return flat.reshape(height, width, 3).copy(), intrinsics, matrix


# ----------------------------------------------------------------------------------------------------------------
# After a run


def create_matching_camera(scene: bpy.types.Scene, settings, seen: dict,
                           camera_matrix: Matrix) -> bpy.types.Object | None:
    """A camera that sees the reference picture as the engine did (`seen`: the result's intrinsics and image size),
    at `camera_matrix` (where the objects were placed from), with the picture as its background; made the scene's
    camera, with the render size set to the picture's. A camera made for this picture before is updated instead.
    None when the engine did not say how it saw the picture."""
    if "intrinsics" not in seen or "image_size" not in seen or settings.image is None:
        return None
    k = np.asarray(seen["intrinsics"], np.float64)
    width, height = (int(v) for v in seen["image_size"])
    params = camera_for_intrinsics(k[0, 0], k[1, 1], k[0, 2], k[1, 2], width, height)
    picture = settings.image
    camera = settings.camera
    if camera is None or camera.get(CREATED_FOR_KEY) != picture.name:
        name = f"{picture.name.rsplit('.', 1)[0]} Camera"
        camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
        scene.collection.objects.link(camera)
        camera[CREATED_FOR_KEY] = picture.name
    data = camera.data
    data.type, data.sensor_fit = "PERSP", params.sensor_fit
    data.lens, data.sensor_width, data.sensor_height = params.lens, params.sensor_width, params.sensor_height
    data.shift_x, data.shift_y = params.shift_x, params.shift_y
    if not any(b.image == picture for b in data.background_images):
        background = data.background_images.new()
        background.image = picture
    data.show_background_images = True
    camera.matrix_world = camera_matrix
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
    render.pixel_aspect_x, render.pixel_aspect_y = params.pixel_aspect_x, params.pixel_aspect_y
    scene.camera = camera
    settings.camera = camera
    _set_intrinsics(settings, (k[0, 0], k[1, 1], k[0, 2], k[1, 2]), known=False)
    return camera


@bpy.app.handlers.persistent
def pack_painted_masks(*_args) -> None:
    """Before a save: re-pack packed mask images that were painted since (Blender saves a packed image as it was
    packed, so strokes made after packing would be lost)."""
    for scene in bpy.data.scenes:
        settings = getattr(scene, "threedfy", None)
        for item in settings.masks if settings is not None else ():
            image = item.image
            if image is not None and image.packed_file is not None and image.is_dirty:
                image.pack()


# ----------------------------------------------------------------------------------------------------------------


def _picture_size(image: bpy.types.Image) -> tuple[int, int]:
    try:
        return images.image_size(image)
    except ValueError as exc:
        message = str(exc)
        raise InputError(message[0].upper() + message[1:], "Reload the image or pick another") from None


def _set_intrinsics(settings, intrinsics, known: bool = True) -> None:
    settings.use_intrinsics = known and intrinsics is not None
    settings.fx, settings.fy, settings.cx, settings.cy = intrinsics if intrinsics is not None else (0.0, 0.0, 0.0, 0.0)


def _matrix_k(intrinsics) -> np.ndarray:
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
