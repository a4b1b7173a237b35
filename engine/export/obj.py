"""Wavefront OBJ writer: `name.obj` + `name.mtl` + `name.png` (when the mesh has a texture), side by side.

* Positions and normals y-up (`frames.object_to_gltf`), as Blender's OBJ importer expects by default.
* `vt` in the engine's own convention (origin bottom-left, which is OBJ's too).
* Faces `f v/vt/vn` (1-based). Without a texture, vertex colours go on the `v` lines (`v x y z r g b`, the
  widely read extension that Blender, MeshLab and trimesh import), as the display values the decoder gives.
* The .mtl names the texture by its bare file name (`map_Kd name.png`), so the three files can move together.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..assets import Mesh
from ..errors import InputError
from ..frames import object_to_gltf
from .normals import vertex_normals


def write_obj(path: str | Path, mesh: Mesh, name: str = "3Dfy object") -> list[Path]:
    """Write `path` (.obj), its .mtl and, with a texture, its .png. Returns the written paths."""
    path = Path(path)
    if path.suffix.lower() != ".obj":
        raise InputError(f"{path.name} does not end in .obj", "pass a path like out/object.obj")
    if mesh.faces.shape[0] == 0:
        raise InputError("cannot export an empty mesh (no faces)", "postprocess a mesh with faces first")
    if not np.isfinite(mesh.vertices).all():
        raise InputError("cannot export a mesh with NaN or infinite vertices", "run the postprocess clean-up first")
    textured = mesh.texture is not None and mesh.uvs is not None
    mtl_path, png_path = path.with_suffix(".mtl"), path.with_suffix(".png")
    material = "base_colour"

    vertices = np.asarray(mesh.vertices, np.float64)
    faces = np.asarray(mesh.faces, np.int64)
    position = object_to_gltf(vertices)
    normal = object_to_gltf(vertex_normals(vertices, faces))
    lines = [f"# {name}, written by 3Dfy (y-up)", f"mtllib {mtl_path.name}", f"o {_safe(name)}"]
    if not textured and mesh.vertex_colors is not None:
        colors = np.clip(np.asarray(mesh.vertex_colors, np.float64), 0.0, 1.0)
        lines.append(_rows("v {:.6f} {:.6f} {:.6f} {:.4f} {:.4f} {:.4f}", np.concatenate([position, colors], 1)))
    else:
        lines.append(_rows("v {:.6f} {:.6f} {:.6f}", position))
    lines.append(_rows("vn {:.5f} {:.5f} {:.5f}", normal))
    corner = faces + 1
    if textured:
        lines.append(_rows("vt {:.6f} {:.6f}", np.asarray(mesh.uvs, np.float64)))
        lines.append(f"usemtl {material}")
        triple = np.repeat(corner, 3, axis=1)  # v/vt/vn share the index
        lines.append(_rows("f {}/{}/{} {}/{}/{} {}/{}/{}", triple, integer=True))
    else:
        lines.append(f"usemtl {material}")
        double = np.repeat(corner, 2, axis=1)
        lines.append(_rows("f {}//{} {}//{} {}//{}", double, integer=True))
    path.write_text("\n".join(lines) + "\n")

    mtl = [f"newmtl {material}", "Ka 0 0 0", "Ks 0 0 0", "d 1", "illum 1"]
    if textured:
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(mesh.texture, dtype=np.uint8)).save(png_path, compress_level=4)
        mtl += ["Kd 1 1 1", f"map_Kd {png_path.name}"]
    else:
        mtl += ["Kd 0.8 0.8 0.8"]
    mtl_path.write_text("\n".join(mtl) + "\n")
    return [path, mtl_path] + ([png_path] if textured else [])


def _rows(pattern: str, array: np.ndarray, integer: bool = False) -> str:
    """Format every row of `array` with `pattern` (one str.format per file section, not per row)."""
    if array.shape[0] == 0:
        return ""
    flat = array.astype(np.int64 if integer else np.float64).ravel().tolist()
    return ("\n".join([pattern] * array.shape[0])).format(*flat)


def _safe(name: str) -> str:
    return "_".join(name.split()) or "object"
