"""Materials that render: a Principled BSDF fed by a packed base-colour texture, or by the vertex colours."""
from __future__ import annotations

import os

import bpy

__all__ = ["load_texture", "create_material"]


def load_texture(path: str | os.PathLike, name: str) -> bpy.types.Image:
    """The PNG at `path` as an sRGB image packed into the .blend (it survives the job folder being deleted)."""
    image = bpy.data.images.load(str(path), check_existing=False)
    image.name = name
    image.colorspace_settings.name = "sRGB"
    image.pack()
    return image


def create_material(name: str, texture: bpy.types.Image | None = None,
                    color_attribute: str | None = None) -> bpy.types.Material:
    """A node material with a Principled BSDF whose Base Color comes from `texture` (through the UV map) or, when
    there is none, from the colour attribute `color_attribute` (so vertex-coloured meshes do not render grey)."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(node for node in nodes if node.type == "BSDF_PRINCIPLED")
    if texture is not None:
        source = nodes.new("ShaderNodeTexImage")
        source.image = texture
        source.location = (bsdf.location.x - 400, bsdf.location.y)
        links.new(source.outputs["Color"], bsdf.inputs["Base Color"])
    elif color_attribute is not None:
        source = nodes.new("ShaderNodeVertexColor")
        source.layer_name = color_attribute
        source.location = (bsdf.location.x - 300, bsdf.location.y)
        links.new(source.outputs["Color"], bsdf.inputs["Base Color"])
    return material
