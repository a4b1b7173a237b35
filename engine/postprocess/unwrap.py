"""UV unwrap with xatlas: charts, a packed atlas with gutters between charts, and the seam-split mesh.

Four speed choices keep xatlas under a second on a 30k-face mesh (its default settings took ~10 s on the same
mesh and CPU) and at about 3 s on 150k faces (27 s in one piece):

* The mesh goes to xatlas in pieces of at most `PIECE_FACES` faces (cut along a Morton curve, so each piece is a
  compact patch), which it charts independently, on all cores, and packs into one atlas; on machines with more
  cores than pieces, the pieces shrink (down to `MIN_PIECE_FACES`) until each core has one (so the charts, not
  the result's quality, depend on the machine). Its chart growing costs far more than linearly in the faces
  of a mesh; piece borders simply become chart borders.
* Chart size is capped (`ChartOptions.max_chart_area` = surface area / `charts` with `charts` from the face
  count, about one chart per `FACES_PER_CHART` faces): xatlas's per-chart work also grows faster than the
  chart; more, smaller charts are much cheaper, and the bake closes their seams (conservative rasterisation at
  chart borders, then the gutter fill).
* Charts grow in one pass (`ChartOptions.max_iterations` = `CHART_ITERATIONS` = 0, xatlas's default 1): on a
  30k-face mesh 0.80 -> 0.50 s on 2 cores, 0.198 -> 0.161 s on 16, for ~7 % more seam vertices and the same
  texel density.
* Packing runs at `PACK_RESOLUTION` texels and the atlas is scaled to the texture size afterwards, so a gutter
  of 1 texel at packing size is `texture_size / PACK_RESOLUTION` texels in the texture.

UVs come back in [0, 1] with the origin at the bottom-left (the engine's convention; glTF flips on export).
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..assets import Mesh
from ..errors import InputError

FACES_PER_CHART = 150  # about how many faces one chart gets (smaller: faster xatlas, more seams)
PACK_RESOLUTION = 512  # xatlas packs at this many texels across (at most the texture size)
PACK_FILL = 0.6  # expected fraction of the atlas covered by charts (sets xatlas's texels per unit)
PIECE_FACES = 8_000  # xatlas charts pieces of at most this many faces (its chart growing is superlinear)
CHART_ITERATIONS = 0  # xatlas's re-seeding passes after the first chart growing (its default 1)
MIN_PIECE_FACES = 2_500  # many cores: smaller pieces, one per core (16 cores, 30k faces: 0.23 -> 0.14 s)


def unwrap(mesh: Mesh, texture_size: int = 2048, padding: int = 4) -> tuple[Mesh, np.ndarray]:
    """Chart and pack `mesh`; returns (mesh split along seams with `uvs` filled, vertex_map (V',) into `mesh`).

    `padding` is the gutter between charts in texels of a `texture_size` texture (at least 1 texel at the
    packing resolution). Vertex colours follow `vertex_map`. Raises InputError when xatlas finds no chart.
    """
    import xatlas  # imported here: the wheel is only needed when unwrapping

    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.uint32)
    area = _surface_area(vertices, faces)
    if not area > 0:
        raise InputError("the mesh has no surface area to unwrap (all faces are degenerate)",
                         "check the decoder output")
    pack_resolution = min(PACK_RESOLUTION, texture_size)
    scale = texture_size / pack_resolution
    charts = max(1, math.ceil(faces.shape[0] / FACES_PER_CHART))

    chart_options = xatlas.ChartOptions()
    chart_options.max_chart_area = float(area / charts) * 1.5  # a little slack so charts round out
    chart_options.max_iterations = CHART_ITERATIONS
    pack_options = xatlas.PackOptions()
    pack_options.padding = max(1, int(round(padding / scale)))
    pack_options.texels_per_unit = float(pack_resolution * math.sqrt(PACK_FILL / area))
    pack_options.bilinear = True
    pack_options.rotate_charts = True

    # Pieces of at most PIECE_FACES faces, cut along a Morton curve through the face centroids (compact patches).
    n_pieces = max(1, math.ceil(faces.shape[0] / PIECE_FACES),
                   min(_usable_cores(), math.ceil(faces.shape[0] / MIN_PIECE_FACES)))
    order = np.argsort(_morton_codes(vertices[faces.astype(np.int64)].mean(axis=1)), kind="stable")
    pieces = np.array_split(order, n_pieces)
    atlas = xatlas.Atlas()
    used_vertices = []
    local = np.empty(vertices.shape[0], np.uint32)  # vertex -> its index in the piece at hand
    for piece in pieces:
        piece_faces = faces[piece]
        marked = np.zeros(vertices.shape[0], bool)
        marked[piece_faces] = True
        used = np.flatnonzero(marked)
        local[used] = np.arange(used.shape[0], dtype=np.uint32)
        used_vertices.append(used)
        atlas.add_mesh(vertices[used], local[piece_faces])
    atlas.generate(chart_options, pack_options)
    if atlas.chart_count == 0 or atlas.atlas_count != 1:
        raise InputError(f"xatlas made {atlas.chart_count} charts on {atlas.atlas_count} atlases",
                         "the mesh may be degenerate; try clean-up on")
    # Stitch the pieces back: face k of the result is face k of the input.
    maps, all_uvs = [], []
    out_faces = np.empty((faces.shape[0], 3), np.int64)
    offset = 0
    for i, (piece, used) in enumerate(zip(pieces, used_vertices)):
        piece_map, piece_faces, piece_uvs = atlas[i]
        maps.append(used[np.asarray(piece_map, np.int64)])
        all_uvs.append(np.asarray(piece_uvs, np.float32))
        out_faces[piece] = np.asarray(piece_faces, np.int64) + offset
        offset += len(piece_map)
    vertex_map = np.concatenate(maps)
    uvs = np.concatenate(all_uvs)
    # xatlas's v axis points down the atlas image; flip it so the origin is bottom-left like ours. (Any
    # orientation would bake correctly; this one keeps charts unmirrored in image viewers.)
    uvs[:, 1] = 1.0 - uvs[:, 1]
    out = Mesh(
        vertices=vertices[vertex_map],
        faces=out_faces.astype(np.int32),
        vertex_colors=None if mesh.vertex_colors is None else mesh.vertex_colors[vertex_map],
        uvs=uvs,
    )
    return out, vertex_map


def _usable_cores() -> int:
    """Cores this process may run on (a container's or Blender's limit, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _morton_codes(points: np.ndarray) -> np.ndarray:
    """Z-order codes of (N, 3) points on a 1024^3 grid over their bounding box (interleaved x, y, z bits)."""
    extent = max(float(np.ptp(points, axis=0).max()), 1e-12)
    q = ((points - points.min(axis=0)) / extent * 1023).astype(np.int64)  # (N, 3) in [0, 1024)
    return _spread_bits(q[:, 0]) | (_spread_bits(q[:, 1]) << 1) | (_spread_bits(q[:, 2]) << 2)


def _spread_bits(x: np.ndarray) -> np.ndarray:
    """10-bit ints -> the same bits two zeros apart (bit k moves to bit 3k), by shifts and masks."""
    x = (x | (x << 16)) & 0x030000FF
    x = (x | (x << 8)) & 0x0300F00F
    x = (x | (x << 4)) & 0x030C30C3
    return (x | (x << 2)) & 0x09249249


def _surface_area(vertices: np.ndarray, faces: np.ndarray) -> float:
    t = vertices[faces.astype(np.int64)].astype(np.float64)
    return float(0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum())
