"""Where results go in the world: the one function from the engine's camera frame to Blender's world.

    object.matrix_world = camera_to_world @ object_to_camera          (4x4, column vectors)

`object_to_camera` comes from the engine (object-local, z-up -> Blender/OpenGL camera: +X right, +Y up, looking
down -Z; scene units). `camera_to_world` is the camera object's world matrix without its scale: scaling a camera
object does not change what it sees, and the engine's frame is in scene units (as `capture.py` renders it).
Without a camera, the viewer stands at the world origin looking along +Y with +Z up (Blender's front view).
"""
from __future__ import annotations

import math

import bpy
import numpy as np
from mathutils import Matrix

__all__ = ["FRONT_VIEW", "camera_to_world", "object_to_world", "base_offset"]

FRONT_VIEW = Matrix.Rotation(math.pi / 2, 4, "X")  # camera -Z -> world +Y, camera +Y -> world +Z


def camera_to_world(camera: bpy.types.Object | None) -> Matrix:
    """The camera frame -> world matrix of `camera` (its scale removed); FRONT_VIEW without a camera."""
    if camera is None:
        return FRONT_VIEW.copy()
    location, rotation, _scale = camera.matrix_world.decompose()
    return Matrix.LocRotScale(location, rotation, None)


def object_to_world(camera_matrix: Matrix, object_to_camera: np.ndarray) -> Matrix:
    """camera_to_world @ object_to_camera, as a Blender Matrix."""
    return camera_matrix @ Matrix(np.asarray(object_to_camera, np.float64).tolist())


def base_offset(vertices: np.ndarray) -> np.ndarray:
    """(3,) object-local point at the middle of the bottom of the bounding box (objects are z-up): moving the
    origin there lets an object stand on a floor at its origin."""
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    return np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]], np.float64)
