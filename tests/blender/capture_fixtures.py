"""A scene of known shapes for the capture tests, their analytic surfaces, and a snapshot of render settings.

World frame: Blender's, Z up, metres. The camera stands at -Y looking towards +Y; behind the objects is a
backdrop rectangle that does not fill the picture, so some pixels see nothing.
"""
from __future__ import annotations

import math
import bpy
import numpy as np
from mathutils import Vector

# ----------------------------------------------------------------------------------------------------------------
# The scene

CUBE_CENTRE = np.array([-1.0, 0.0, 0.6])
CUBE_HALF = 0.6  # m
CUBE_YAW = math.radians(30.0)  # about +Z
SPHERE_CENTRE = np.array([1.1, -0.5, 0.9])
SPHERE_RADIUS = 0.7  # m; a 64 x 32 UV sphere strays at most r·(π/64)² ≈ 1.7 mm inside it
BACKDROP_CENTRE = np.array([0.0, 2.5, 0.75])
BACKDROP_HALF = (2.5, 1.75)  # m along world X and world Z; it faces -Y
WORLD_COLOUR = (0.2, 0.4, 0.6)  # linear, strength 1
SPHERE_COLOUR = (0.8, 0.03, 0.03, 1.0)
CAMERA_LOCATION = (0.0, -9.0, 2.0)
CAMERA_TARGET = (0.0, 0.0, 0.8)


def build_scene(width: int = 64, height: int = 48) -> bpy.types.Scene:
    """An empty factory scene with the cube, the sphere, the backdrop, a sun and a 50 mm camera, rendering at
    width x height (100%), Standard view transform, no dither (so colours can be checked exactly)."""
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)  # keeps preferences and extensions
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_cube_add(size=2 * CUBE_HALF, location=CUBE_CENTRE, rotation=(0.0, 0.0, CUBE_YAW))
    bpy.ops.mesh.primitive_uv_sphere_add(
        segments=64, ring_count=32, radius=SPHERE_RADIUS, location=SPHERE_CENTRE
    )
    sphere = bpy.context.object
    red = bpy.data.materials.new("Red")
    red.use_nodes = True
    red.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = SPHERE_COLOUR
    red.diffuse_color = SPHERE_COLOUR
    sphere.data.materials.append(red)
    bpy.ops.mesh.primitive_plane_add(size=2.0, location=BACKDROP_CENTRE, rotation=(math.radians(90.0), 0.0, 0.0))
    bpy.context.object.scale = (BACKDROP_HALF[0], BACKDROP_HALF[1], 1.0)
    bpy.ops.object.light_add(type="SUN", rotation=(math.radians(40.0), 0.0, math.radians(-30.0)))
    bpy.context.object.data.energy = 3.0

    world = bpy.data.worlds.new("World")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (*WORLD_COLOUR, 1.0)
    world.color = WORLD_COLOUR
    scene.world = world

    camera = bpy.data.objects.new("RefCam", bpy.data.cameras.new("RefCam"))
    scene.collection.objects.link(camera)
    camera.location = CAMERA_LOCATION
    direction = Vector(CAMERA_TARGET) - Vector(CAMERA_LOCATION)
    camera.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    camera.data.clip_end = 50.0
    scene.camera = camera

    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.dither_intensity = 0.0
    scene.view_settings.view_transform = "Standard"
    bpy.context.view_layer.update()
    return scene


# ----------------------------------------------------------------------------------------------------------------
# The analytic shapes: distance to their surfaces, and where pixel rays hit them


def _cube_rotation() -> np.ndarray:
    c, s = math.cos(CUBE_YAW), math.sin(CUBE_YAW)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # local -> world


def surface_distance(points: np.ndarray) -> np.ndarray:
    """(..., 3) world points -> (...) distance to the nearest analytic surface (cube, sphere, backdrop)."""
    p = np.asarray(points, dtype=np.float64)
    q = (p - CUBE_CENTRE) @ _cube_rotation()  # cube-local
    d = np.abs(q) - CUBE_HALF
    cube = np.abs(np.linalg.norm(np.maximum(d, 0.0), axis=-1) + np.minimum(d.max(axis=-1), 0.0))
    sphere = np.abs(np.linalg.norm(p - SPHERE_CENTRE, axis=-1) - SPHERE_RADIUS)
    r = p - BACKDROP_CENTRE
    outside_x = np.maximum(np.abs(r[..., 0]) - BACKDROP_HALF[0], 0.0)
    outside_z = np.maximum(np.abs(r[..., 2]) - BACKDROP_HALF[1], 0.0)
    backdrop = np.sqrt(r[..., 1] ** 2 + outside_x**2 + outside_z**2)
    return np.minimum(np.minimum(cube, sphere), backdrop)


def ray_hits(origins: np.ndarray, directions: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """(N, 3) world rays -> (N,) bool: does the ray hit any shape, each grown by `grow` metres (negative
    shrinks)? Hits closer than 0.1 m (the camera's clip start) do not count."""
    o, v = np.asarray(origins, float), np.asarray(directions, float)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    hit = np.zeros(len(o), dtype=bool)
    # sphere
    oc = o - SPHERE_CENTRE
    b = np.einsum("ij,ij->i", oc, v)
    disc = b**2 - (np.einsum("ij,ij->i", oc, oc) - (SPHERE_RADIUS + grow) ** 2)
    hit |= (disc >= 0) & (-b + np.sqrt(np.maximum(disc, 0.0)) > 0.1)
    # cube: slabs in its own frame
    rot = _cube_rotation()
    ol, vl = (o - CUBE_CENTRE) @ rot, v @ rot
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-(CUBE_HALF + grow) - ol) / vl
        t2 = ((CUBE_HALF + grow) - ol) / vl
    t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
    hit |= (t_near <= t_far) & (t_far > 0.1)
    # backdrop rectangle in the plane y = BACKDROP_CENTRE[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (BACKDROP_CENTRE[1] - o[:, 1]) / v[:, 1]
    p = o + t[:, None] * v
    inside = (np.abs(p[:, 0] - BACKDROP_CENTRE[0]) <= BACKDROP_HALF[0] + grow) & (
        np.abs(p[:, 2] - BACKDROP_CENTRE[2]) <= BACKDROP_HALF[1] + grow
    )
    hit |= inside & (t > 0.1)
    return hit


def pixel_rays(scene: bpy.types.Scene, camera: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """World rays through every pixel centre, (H·W, 3) origins and directions in row-major order (row 0 = top),
    built from Blender's own `Camera.view_frame` (its frame corners for the scene's render settings)."""
    width = scene.render.resolution_x * scene.render.resolution_percentage // 100
    height = scene.render.resolution_y * scene.render.resolution_percentage // 100
    top_right, _, bottom_left, top_left = (np.array(c) for c in camera.data.view_frame(scene=scene))
    u = (np.arange(width) + 0.5) / width
    v = (np.arange(height) + 0.5) / height
    frame = (
        top_left[None, None, :]
        + u[None, :, None] * (top_right - top_left)[None, None, :]
        + v[:, None, None] * (bottom_left - top_left)[None, None, :]
    ).reshape(-1, 3)  # (H·W, 3) camera-local points on the frame
    matrix = np.array(camera.matrix_world.normalized(), dtype=np.float64)
    rotation, location = matrix[:3, :3], matrix[:3, 3]
    if camera.data.type == "ORTHO":
        origins_cam = frame * np.array([1.0, 1.0, 0.0])
        directions_cam = np.broadcast_to(np.array([0.0, 0.0, -1.0]), frame.shape)
    else:
        origins_cam = np.zeros_like(frame)
        directions_cam = frame
    return origins_cam @ rotation.T + location, directions_cam @ rotation.T


# ----------------------------------------------------------------------------------------------------------------
# Settings snapshot


def settings_snapshot(scene: bpy.types.Scene) -> dict[str, object]:
    """Every readable property of the scene's render, engine, colour management and view-layer settings and of
    every camera datablock (two levels of nested structs), keyed by path; for comparing before and after."""
    out: dict[str, object] = {"scene.camera": scene.camera.name if scene.camera else None}
    places = [
        ("render", scene.render),
        ("cycles", scene.cycles),
        ("eevee", scene.eevee),
        ("display", scene.display),
        ("view_settings", scene.view_settings),
        ("display_settings", scene.display_settings),
    ]
    places += [(f"view_layer[{vl.name}]", vl) for vl in scene.view_layers]
    places += [(f"camera[{cam.name}]", cam) for cam in bpy.data.cameras]
    for label, struct in places:
        _walk(struct, label, out, depth=2)
    return out


def _walk(struct, label: str, out: dict, depth: int) -> None:
    for prop in struct.bl_rna.properties:
        name = prop.identifier
        if name in ("rna_type", "depsgraph", "layer_collection", "objects"):
            continue
        try:
            value = getattr(struct, name)
        except (AttributeError, RuntimeError, TypeError):
            continue
        key = f"{label}.{name}"
        if prop.type == "POINTER":
            if isinstance(value, bpy.types.ID):
                out[key] = value.name
            elif value is not None and depth > 0:
                _walk(value, key, out, depth - 1)
        elif prop.type == "COLLECTION":
            out[key] = len(value)
        else:
            out[key] = _plain(value)


def _plain(value):
    """bpy arrays (also nested, e.g. matrices) -> tuples; enum-flag sets -> frozensets; the rest as is."""
    if isinstance(value, set):
        return frozenset(value)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return value
    return tuple(_plain(v) for v in value)
