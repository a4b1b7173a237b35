"""Writers for engine assets: GLB (textured or vertex-coloured), OBJ + MTL + PNG, Gaussian splat PLY.

The engine's frame is z-up; GLB and OBJ are written y-up (`frames.object_to_gltf`), the Gaussian PLY stays z-up.
"""
from .glb import glb_bytes, scene_glb_bytes, write_glb, write_scene_glb
from .obj import write_obj
from .ply import PLY_FIELDS, gaussian_ply_fields, write_gaussian_ply

__all__ = ["glb_bytes", "scene_glb_bytes", "write_glb", "write_scene_glb", "write_obj", "PLY_FIELDS", "gaussian_ply_fields", "write_gaussian_ply"]
