"""Helpers for the Blender tests: scene snapshots, reference pictures and masks, cameras, silhouettes."""
from __future__ import annotations

import math
from pathlib import Path

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Euler, Vector

WIDTH, HEIGHT = 64, 48  # the reference pictures' size
LENS_FOR_DEFAULT_INTRINSICS = 1.2 * 36.0  # mm on a 36 mm sensor: f = 1.2 W, the fake pipeline's default


def snapshot() -> dict:
    """Everything a run could add or change, in comparable form: datablock names per type, the scene's
    collection tree, and every object's world matrix."""
    data = {name: sorted(block.name for block in getattr(bpy.data, name))
            for name in ("objects", "meshes", "materials", "images", "collections", "cameras", "node_groups")}
    scene = bpy.context.scene
    data["tree"] = sorted(c.name for c in scene.collection.children_recursive)
    data["matrices"] = {o.name: [round(v, 6) for row in o.matrix_world for v in row] for o in bpy.data.objects}
    return data


def add_camera(location=(0.0, -6.0, 1.0), rotation_deg=(90.0, 0.0, 0.0), lens=LENS_FOR_DEFAULT_INTRINSICS,
               shift=(0.0, 0.0), scale=(1.0, 1.0, 1.0)) -> bpy.types.Object:
    """A perspective camera (36 mm sensor, AUTO fit) made the scene camera, rendering WIDTH x HEIGHT."""
    scene = bpy.context.scene
    data = bpy.data.cameras.new("Camera")
    data.lens, data.sensor_width, data.sensor_fit = lens, 36.0, "AUTO"
    data.shift_x, data.shift_y = shift
    camera = bpy.data.objects.new("Camera", data)
    scene.collection.objects.link(camera)
    camera.location = location
    camera.rotation_euler = Euler([math.radians(a) for a in rotation_deg])
    camera.scale = scale
    scene.camera = camera
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = WIDTH, HEIGHT, 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    bpy.context.view_layer.update()
    return camera


def camera_intrinsics(camera: bpy.types.Object, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """K in pixels for the cameras `add_camera` makes (AUTO fit with width >= height, square pixels): the
    textbook formula, independent of the extension's code."""
    data = camera.data
    f = data.lens / data.sensor_width * width
    return np.array([[f, 0, width / 2 - data.shift_x * width], [0, f, height / 2 + data.shift_y * width], [0, 0, 1]])


def rectangle_mask(u0: int, v0: int, u1: int, v1: int) -> np.ndarray:
    """(HEIGHT, WIDTH) bool, True in columns u0..u1-1 and rows v0..v1-1 (row 0 = top)."""
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[v0:v1, u0:u1] = True
    return mask


def picture() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def image_from_array(name: str, pixels: np.ndarray) -> bpy.types.Image:
    """A Blender image holding `pixels` ((H, W) bool/float mask or (H, W, 3) uint8 picture; row 0 = top)."""
    if pixels.ndim == 2:
        rgba = np.repeat(pixels.astype(np.float32)[:, :, None], 4, axis=2)
        rgba[:, :, 3] = 1.0
    else:
        rgba = np.ones((*pixels.shape[:2], 4), np.float32)
        rgba[:, :, :3] = pixels[:, :, :3] / 255.0
    height, width = rgba.shape[:2]
    image = bpy.data.images.new(name, width, height, alpha=True)
    image.pixels.foreach_set(np.flipud(rgba).reshape(-1))
    return image


def write_picture(path: Path, pixels: np.ndarray) -> Path:
    """A PNG file of a picture or mask array (through the engine's PNG writer)."""
    from engine.jobs import write_png

    if pixels.ndim == 2:
        pixels = np.repeat((pixels * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    write_png(path, pixels)
    return path


def silhouette(obj: bpy.types.Object, camera: bpy.types.Object, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """(height, width) bool: pixels whose centre the object covers, projected by Blender's own camera code
    (`world_to_camera_view`) from the object's evaluated world-space triangles."""
    scene = bpy.context.scene
    mesh = obj.data
    corners = np.empty(len(mesh.vertices) * 3, np.float64)
    mesh.vertices.foreach_get("co", corners)
    world = [obj.matrix_world @ Vector(c) for c in corners.reshape(-1, 3)]
    ndc = np.array([tuple(world_to_camera_view(scene, camera, p)) for p in world])  # x, y in [0, 1] from bottom-left
    pixels = np.stack([ndc[:, 0] * width, (1.0 - ndc[:, 1]) * height], axis=1)
    mesh.calc_loop_triangles()
    triangles = np.empty(len(mesh.loop_triangles) * 3, np.int32)
    mesh.loop_triangles.foreach_get("vertices", triangles)
    return rasterize(pixels[triangles.reshape(-1, 3)], width, height)


def rasterize(triangles: np.ndarray, width: int, height: int) -> np.ndarray:
    """(T, 3, 2) pixel-space triangles -> (height, width) bool coverage of pixel centres (either winding)."""
    v, u = np.mgrid[0:height, 0:width]
    centres = np.stack([u.ravel() + 0.5, v.ravel() + 0.5], axis=1)  # (P, 2)
    covered = np.zeros(len(centres), bool)
    for a, b, c in triangles:
        d1 = _edge(centres, a, b)
        d2 = _edge(centres, b, c)
        d3 = _edge(centres, c, a)
        inside = ((d1 >= 0) & (d2 >= 0) & (d3 >= 0)) | ((d1 <= 0) & (d2 <= 0) & (d3 <= 0))
        covered |= inside
    return covered.reshape(height, width)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def _edge(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (b[0] - a[0]) * (points[:, 1] - a[1]) - (b[1] - a[1]) * (points[:, 0] - a[0])
