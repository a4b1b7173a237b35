"""Postprocess: raw decoder mesh -> clean, decimated, UV-unwrapped, textured mesh (no CUDA extensions).

Entry point: `make_artist_mesh` (artist.py). The steps are public too, one module each: `cleanup`, `decimate`
(with `collapse`, torch's data-parallel edge collapse, and `quadric`, its error metric), `unwrap` (xatlas),
`raster` (UV triangles -> texels), `closest` (closest points on a mesh), `bake` (colour transfer), `dilate`
(gutter fill); `procedural` makes test meshes.
"""
from .artist import TEXTURE_SIZES, PostprocessOptions, make_artist_mesh
from .cleanup import CleanupOptions, CleanupReport, clean_mesh
from .decimate import FACE_PRESETS, resolve_face_count

# (The step functions `decimate.decimate`, `unwrap.unwrap`, `bake.bake_texture` are imported from their modules;
# re-exporting them here would shadow the module names.)
__all__ = ["make_artist_mesh", "PostprocessOptions", "TEXTURE_SIZES", "CleanupOptions", "CleanupReport", "clean_mesh", "FACE_PRESETS",
           "resolve_face_count"]
