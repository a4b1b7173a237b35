"""Meshes from the engine's arrays, through `foreach_set` (no per-vertex Python)."""
from __future__ import annotations

import bpy
import numpy as np

__all__ = ["COLOR_ATTRIBUTE", "UV_MAP", "create_mesh"]

COLOR_ATTRIBUTE = "Color"  # the vertex colour attribute's name (the material refers to it)
UV_MAP = "UVMap"


def create_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray | None = None,
                vertex_colors: np.ndarray | None = None) -> bpy.types.Mesh:
    """A smooth-shaded triangle mesh datablock.

    vertices (V, 3) float, faces (F, 3) int (counter-clockwise from outside), uvs (V, 2) per vertex with the
    origin bottom-left (as Blender's), vertex_colors (V, 3) linear RGB in [0, 1] (a float colour attribute). The
    arrays must already be checked (engine/jobs.py `read_result`): indices in range, values finite.
    """
    vertices = np.ascontiguousarray(vertices, np.float32)
    faces = np.ascontiguousarray(faces, np.int32)
    corners = faces.reshape(-1)  # (3F,) vertex of each face corner (Blender's "loops")
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.reshape(-1))
    mesh.loops.add(len(corners))
    mesh.loops.foreach_set("vertex_index", corners)
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, len(corners), 3, dtype=np.int32))
    if uvs is not None:
        layer = mesh.uv_layers.new(name=UV_MAP)
        layer.data.foreach_set("uv", np.ascontiguousarray(uvs, np.float32)[corners].reshape(-1))  # (3F, 2)
    if vertex_colors is not None:
        rgba = np.ones((len(vertices), 4), np.float32)
        rgba[:, :3] = vertex_colors[:, :3]
        attribute = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        attribute.data.foreach_set("color", rgba.reshape(-1))
        mesh.color_attributes.active_color = attribute
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
    mesh.update()
    mesh.validate(clean_customdata=False)  # drops degenerate faces, which Blender must not keep
    mesh.polygons.foreach_set("use_smooth", np.ones(len(mesh.polygons), bool))
    mesh.update()
    return mesh
