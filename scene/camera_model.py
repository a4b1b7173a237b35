"""Blender's camera projection in numpy (no bpy): pixel intrinsics from camera settings, pointmaps from depth.

Frames and pixels (the engine's conventions, `engine/frames.py`, `engine/intrinsics.py`):
- camera frame: Blender/OpenGL, +X right, +Y up, looking down -Z, in scene units (metres when the scene is);
- pixels: u right, v down, origin at the image's top-left corner, pixel (row i, column j) has its centre at
  (u, v) = (j + 0.5, i + 0.5); images and pointmaps are (H, W, ...) with row 0 at the top.

Blender's rules (the render's view plane; Cycles, EEVEE and Workbench agree):
- the sensor size is `sensor_height` for sensor_fit VERTICAL and `sensor_width` otherwise (AUTO included);
- that size spans the image width when the fit is horizontal, its height when vertical; AUTO fits the larger image
  dimension measured in pixel-aspect-corrected units (W·pixel_aspect_x vs H·pixel_aspect_y, ties horizontal);
- a pixel is `pixel_aspect_y / pixel_aspect_x` times as tall as it is wide (Blender squeezes the picture, not
  the field of view along the fitted side);
- lens shift moves the view plane by shift × the fitted side's length (positive x right, positive y up);
- orthographic cameras: `ortho_scale` scene units span the fitted side, with the same fit, aspect and shift rules.

Depth: every engine's Depth (Z) pass holds the distance along the camera's -Z axis (planar depth, not the length
of the ray); pixels that see nothing hold 1e10 (`BACKGROUND_DEPTH`). Both are checked in tests/blender.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAMERA_TYPES = ("PERSP", "ORTHO")
SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")
BACKGROUND_DEPTH = 1e10  # what Blender's Depth pass holds where no surface was hit


class CaptureError(Exception):
    """A camera, a render setting or a rendered pass that cannot give an exact reference; the message says which
    and what to change."""


# ----------------------------------------------------------------------------------------------------------------
# Camera settings and the projection they make


@dataclass(frozen=True)
class CameraParams:
    """What of a Blender camera (`camera.data`) and the render settings (`scene.render`) decides where a point
    lands in the picture. Field names and units are Blender's."""

    type: str = "PERSP"  # "PERSP" or "ORTHO" (panoramic cameras have no pinhole and are refused)
    lens: float = 50.0  # mm, focal length (PERSP)
    sensor_width: float = 36.0  # mm
    sensor_height: float = 24.0  # mm, used only with sensor_fit VERTICAL
    sensor_fit: str = "AUTO"  # "AUTO", "HORIZONTAL" or "VERTICAL"
    shift_x: float = 0.0  # fraction of the fitted side, + moves the view right
    shift_y: float = 0.0  # fraction of the fitted side, + moves the view up
    ortho_scale: float = 6.0  # scene units across the fitted side (ORTHO)
    clip_start: float = 0.1  # scene units
    clip_end: float = 1000.0  # scene units; depth at or past it is background
    resolution_x: int = 1920  # px, before the percentage
    resolution_y: int = 1080  # px, before the percentage
    resolution_percentage: int = 100  # %, the rendered size is floor(resolution · percentage / 100)
    pixel_aspect_x: float = 1.0  # relative pixel width
    pixel_aspect_y: float = 1.0  # relative pixel height

    def __post_init__(self) -> None:
        if self.type not in CAMERA_TYPES:
            raise CaptureError(
                f"camera type {self.type!r} is not supported; use a perspective or orthographic camera "
                "(panoramic cameras have no pinhole)"
            )
        if self.sensor_fit not in SENSOR_FITS:
            raise CaptureError(f"sensor_fit must be one of {SENSOR_FITS}, got {self.sensor_fit!r}")
        positive = {
            "lens": self.lens,
            "sensor_width": self.sensor_width,
            "sensor_height": self.sensor_height,
            "ortho_scale": self.ortho_scale,
            "clip_end": self.clip_end,
            "pixel_aspect_x": self.pixel_aspect_x,
            "pixel_aspect_y": self.pixel_aspect_y,
        }
        for name, value in positive.items():
            if not (np.isfinite(value) and value > 0):
                raise CaptureError(f"camera setting {name} must be a positive number, got {value}")
        if not (0 <= self.clip_start < self.clip_end):
            raise CaptureError(f"clip_start ({self.clip_start}) must lie in [0, clip_end={self.clip_end})")
        if self.resolution_x < 1 or self.resolution_y < 1 or self.resolution_percentage < 1:
            raise CaptureError(
                f"render resolution {self.resolution_x}x{self.resolution_y} at {self.resolution_percentage}% "
                "must be positive"
            )
        if min(image_size(self)) < 1:
            raise CaptureError(
                f"render resolution {self.resolution_x}x{self.resolution_y} at {self.resolution_percentage}% "
                "makes an empty image; raise the resolution or the percentage"
            )


@dataclass(frozen=True)
class Projection:
    """Camera frame -> pixels for one rendered image.

    Perspective:  u = fx · X / (-Z) + cx,   v = -fy · Y / (-Z) + cy   (fx, fy in pixels)
    Orthographic: u = fx · X + cx,          v = -fy · Y + cy          (fx, fy in pixels per scene unit)
    The perspective case is the pinhole K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] of `engine/intrinsics.py`
    (OpenCV camera: x_cv = X, y_cv = -Y, z_cv = -Z).
    """

    width: int  # px
    height: int  # px
    fx: float
    fy: float
    cx: float  # px from the left edge
    cy: float  # px from the top edge
    orthographic: bool

    @property
    def intrinsics(self) -> tuple[float, float, float, float] | None:
        """(fx, fy, cx, cy) in pixels for a perspective camera; None for an orthographic one (no pinhole)."""
        return None if self.orthographic else (self.fx, self.fy, self.cx, self.cy)

    def pinhole(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels; raises CaptureError for an orthographic camera, which has none."""
        if self.orthographic:
            raise CaptureError(
                "an orthographic camera has no pinhole intrinsics; use a perspective camera, or pass the "
                "orthographic pointmap without intrinsics"
            )
        return (self.fx, self.fy, self.cx, self.cy)


def image_size(cam: CameraParams) -> tuple[int, int]:
    """(width, height) in pixels of the rendered image: Blender truncates resolution · percentage / 100."""
    return (
        cam.resolution_x * cam.resolution_percentage // 100,
        cam.resolution_y * cam.resolution_percentage // 100,
    )


def projection(cam: CameraParams) -> Projection:
    """The exact projection Blender renders `cam` with (see the module docstring for the rules)."""
    width, height = image_size(cam)
    ycor = cam.pixel_aspect_y / cam.pixel_aspect_x  # a pixel's height over its width
    if cam.sensor_fit == "AUTO":
        horizontal = width * cam.pixel_aspect_x >= height * cam.pixel_aspect_y
    else:
        horizontal = cam.sensor_fit == "HORIZONTAL"
    # the fitted side, in pixel widths
    fitted_side = width if horizontal else ycor * height
    if cam.type == "ORTHO":
        extent = cam.ortho_scale  # scene units across the fitted side
    else:
        sensor = cam.sensor_height if cam.sensor_fit == "VERTICAL" else cam.sensor_width
        extent = sensor / cam.lens  # across the fitted side, at unit depth
    pixel_width = extent / fitted_side  # a pixel's width on the view plane
    return Projection(
        width=width,
        height=height,
        fx=1.0 / pixel_width,
        fy=1.0 / (pixel_width * ycor),
        cx=width / 2.0 - cam.shift_x * fitted_side,
        cy=height / 2.0 + cam.shift_y * fitted_side / ycor,
        orthographic=cam.type == "ORTHO",
    )


def camera_for_intrinsics(
    fx: float, fy: float, cx: float, cy: float, width: int, height: int, sensor_width: float = 36.0
) -> CameraParams:
    """A perspective CameraParams that Blender renders with exactly these pinhole intrinsics at width x height:
    HORIZONTAL sensor fit, lens from fx, pixel aspect from fx/fy (Blender's aspects are >= 1), shift from (cx, cy).
    The inverse of `projection` (for making a Blender camera that matches an estimated one)."""
    if not (fx > 0 and fy > 0 and width >= 1 and height >= 1):
        raise CaptureError(f"need positive focal lengths and image size, got fx={fx}, fy={fy}, {width}x{height}")
    ycor = fx / fy  # pixel height over width
    aspect_x, aspect_y = (1.0, ycor) if ycor >= 1 else (1.0 / ycor, 1.0)
    return CameraParams(
        type="PERSP",
        lens=fx * sensor_width / width,
        sensor_width=sensor_width,
        sensor_height=sensor_width * height * ycor / width,
        sensor_fit="HORIZONTAL",
        shift_x=(width / 2.0 - cx) / width,
        shift_y=(cy - height / 2.0) * ycor / width,
        resolution_x=int(width),
        resolution_y=int(height),
        resolution_percentage=100,
        pixel_aspect_x=aspect_x,
        pixel_aspect_y=aspect_y,
    )


FRAME_METHODS = ("STRETCH", "FIT", "CROP")  # how Blender lays a camera's background image over its frame


def background_intrinsics(
    render: Projection, pixel_aspect: tuple[float, float], image_width: int, image_height: int, frame_method: str
) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels of a camera's background image, from the camera's render projection.

    Blender draws the image over the camera frame (the render's W·pixel_aspect_x by H·pixel_aspect_y display
    units): STRETCH fills the frame; FIT scales the image uniformly to fit inside it, CROP to cover it, both centred.
    Offset, scale, rotation and flips of the background image are not modelled (the caller warns about them).
    """
    if render.orthographic:
        raise CaptureError("an orthographic camera has no pinhole intrinsics; use a perspective camera")
    if frame_method not in FRAME_METHODS:
        raise CaptureError(f"frame method must be one of {FRAME_METHODS}, got {frame_method!r}")
    if image_width < 1 or image_height < 1:
        raise CaptureError(f"the background image is {image_width}x{image_height}; it needs pixels")
    aspect_x, aspect_y = pixel_aspect
    if frame_method == "STRETCH":
        sx, sy = image_width / render.width, image_height / render.height  # image px per render px
        return (render.fx * sx, render.fy * sy, render.cx * sx, render.cy * sy)
    frame_w, frame_h = render.width * aspect_x, render.height * aspect_y  # display units
    fit = min if frame_method == "FIT" else max
    k = fit(frame_w / image_width, frame_h / image_height)  # display units per image pixel
    offset_x, offset_y = (frame_w - k * image_width) / 2.0, (frame_h - k * image_height) / 2.0
    # render px x = display x / aspect_x; image px u = (display x - offset_x) / k
    return (render.fx * aspect_x / k, render.fy * aspect_y / k,
            (render.cx * aspect_x - offset_x) / k, (render.cy * aspect_y - offset_y) / k)


# ----------------------------------------------------------------------------------------------------------------
# Depth -> points, points -> pixels


def pointmap_from_depth(depth: np.ndarray, proj: Projection, clip_end: float) -> np.ndarray:
    """(H, W) planar depth (Blender's Depth pass, row 0 at the top) -> (H, W, 3) float32 points in the camera frame.

    Each point lies on its pixel centre's ray (perspective) or line (orthographic) at Z = -depth. Pixels without
    a surface (depth not finite, <= 0, at or past `clip_end`, or Blender's 1e10 background) become NaN.
    """
    depth = np.asarray(depth)
    if depth.shape != (proj.height, proj.width):
        raise CaptureError(
            f"the depth pass is {depth.shape[1::-1] if depth.ndim == 2 else depth.shape} but the camera renders "
            f"{proj.width}x{proj.height}; pass the depth of this render"
        )
    d = depth.astype(np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(d) & (d > 0) & (d < min(clip_end, BACKGROUND_DEPTH))
    u = np.arange(proj.width, dtype=np.float64) + 0.5  # (W,) pixel centres
    v = np.arange(proj.height, dtype=np.float64) + 0.5  # (H,)
    x = ((u - proj.cx) / proj.fx)[None, :]  # (1, W): X per unit depth, or X itself when orthographic
    y = (-(v - proj.cy) / proj.fy)[:, None]  # (H, 1)
    scale = np.ones_like(d) if proj.orthographic else d
    points = np.empty((proj.height, proj.width, 3), dtype=np.float64)
    points[..., 0] = x * scale
    points[..., 1] = y * scale
    points[..., 2] = -d
    points[~valid] = np.nan
    return points.astype(np.float32)


def project(points: np.ndarray, proj: Projection) -> np.ndarray:
    """(..., 3) camera-frame points -> (..., 2) pixel coordinates (u, v) as float64; a pixel's centre is
    (column + 0.5, row + 0.5). Points behind a perspective camera give non-finite or meaningless values."""
    p = np.asarray(points, dtype=np.float64)
    if proj.orthographic:
        x, y = p[..., 0], p[..., 1]
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            x, y = p[..., 0] / -p[..., 2], p[..., 1] / -p[..., 2]
    return np.stack([proj.fx * x + proj.cx, -proj.fy * y + proj.cy], axis=-1)
