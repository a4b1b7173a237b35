"""One run's results -> posed, textured objects in a new collection, all or nothing.

`create_objects` is the scene layer's entry point. It is handed a `JobResult` that `engine.jobs.read_result` has
already read and checked in full, computes every array first, and only then creates datablocks; if anything
fails on the way, every datablock it created is removed again, so the scene is exactly as before.
Undo is the caller's: the operator's UNDO flag, or `bpy.ops.ed.undo_push` from the API.
"""
from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np
from mathutils import Matrix

from ..engine.jobs import JobResult
from .material import create_material, load_texture
from .mesh import COLOR_ATTRIBUTE, create_mesh
from .placement import base_offset, object_to_world

__all__ = ["PROPERTY_PREFIX", "Provenance", "create_objects", "next_collection_name"]

PROPERTY_PREFIX = "threedfy_"  # custom properties on the created objects and collection


@dataclass(frozen=True)
class Provenance:
    """What made a run's objects; stored as custom properties so a result can be reproduced or traced."""

    seed: int
    quality: str
    source_image: str  # file path or image datablock name of the picture
    weights: str  # weights id: Hugging Face repo, folder name, or "random:PRESET:SEED"
    weights_revision: str  # commit of the weights when known

    def properties(self) -> dict:
        return {f"{PROPERTY_PREFIX}{key}": value for key, value in vars(self).items()}


def create_objects(scene: bpy.types.Scene, result: JobResult, *, names: list[str], mask_hashes: list[str],
                   camera_matrix: Matrix, provenance: Provenance, origin_at_base: bool = False,
                   collection: bpy.types.Collection | str | None = None,
                   ) -> tuple[bpy.types.Collection, list[bpy.types.Object]]:
    """Build one object per result object and return (collection, objects) in result order.

    names / mask_hashes: per mask (indexed by `mask_index`). camera_matrix: `placement.camera_to_world` of the
    reference camera. origin_at_base: put each object's origin at the bottom middle of its bounding box (the mesh
    moves, the object does not). collection: None makes "3Dfy NNN" under the scene collection, a string names the
    new collection, an existing collection receives the objects as they are.
    """
    # 1. Everything that can fail without touching bpy.data.
    plans = []
    for obj in result.objects:
        vertices = obj.mesh.vertices.astype(np.float64)
        pose = object_to_world(camera_matrix, obj.object_to_camera)
        if origin_at_base:
            offset = base_offset(vertices)
            vertices = vertices - offset
            pose = pose @ Matrix.Translation(offset.tolist())
        name = names[obj.mask_index] or f"Object {obj.mask_index + 1}"
        plans.append((obj, name, vertices, pose))

    # 2. Create, remembering every datablock so that a failure can take all of them back.
    created: list[tuple[object, bpy.types.ID]] = []
    try:
        if isinstance(collection, bpy.types.Collection):
            target = collection
        else:
            target = bpy.data.collections.new(collection or next_collection_name())
            created.append((bpy.data.collections, target))
            scene.collection.children.link(target)
            for key, value in provenance.properties().items():
                target[key] = value
        objects = []
        for obj, name, vertices, pose in plans:
            mesh = create_mesh(name, vertices, obj.mesh.faces, uvs=obj.mesh.uvs, vertex_colors=obj.mesh.vertex_colors)
            created.append((bpy.data.meshes, mesh))
            texture = None
            if obj.texture_path is not None:
                texture = load_texture(obj.texture_path, f"{name} Texture")
                created.append((bpy.data.images, texture))
            colors = COLOR_ATTRIBUTE if obj.mesh.vertex_colors is not None else None
            material = create_material(f"{name} Material", texture=texture, color_attribute=colors)
            created.append((bpy.data.materials, material))
            mesh.materials.append(material)
            blender_object = bpy.data.objects.new(name, mesh)
            created.append((bpy.data.objects, blender_object))
            blender_object.matrix_world = pose
            for key, value in provenance.properties().items():
                blender_object[key] = value
            blender_object[f"{PROPERTY_PREFIX}mask_index"] = obj.mask_index
            blender_object[f"{PROPERTY_PREFIX}mask_hash"] = mask_hashes[obj.mask_index]
            target.objects.link(blender_object)
            objects.append(blender_object)
    except BaseException:
        for data, block in reversed(created):
            data.remove(block)
        raise
    return target, objects


def next_collection_name(prefix: str = "3Dfy") -> str:
    """"3Dfy 001", "3Dfy 002", ...: the first number not used by a collection of this file."""
    used = {c.name for c in bpy.data.collections}
    number = 1
    while f"{prefix} {number:03d}" in used:
        number += 1
    return f"{prefix} {number:03d}"
