"""Surfaces buried inside other surfaces: the "inner wall" that interior pruning leaves in a decoder mesh.

Why it exists: the pipeline keeps only the surface shell of the occupied voxels (`occupancy.keep_surface`), and
FlexiCubes takes every lattice point of the pruned interior as outside. So besides the true outer surface, a
second closed surface forms about one coarse voxel further in, wound inward (its normals point into the pruned
hole). It is invisible, and it doubles the faces that decimation and clean-up work on.

The rule (`find_inner_walls`): a part (a vertex-connected component) is an inner wall when it faces away from
the material it is buried in, for a robust majority of its sample points:

* "buried in": the winding number of the *other* parts at the sample is +1 (inside a surface wound outward);
* "faces away": the part's own signed volume is clearly negative (it is wound inward).

The mirror case (winding -1 with a clearly positive volume: a whole object given inside out) counts the same.
What this keeps: separate objects side by side (winding 0), an outward part nested inside another (same sign:
a real, if hidden, part), anything inside a hollow that opens to the outside (one part with its outer surface),
open sheets (no clear volume). What it drops besides the pruning wall: the inner surface of a *sealed* cavity,
which cannot be seen either; a part inside that cavity then sits at winding +1 - 1 = 0 and is kept.

What it cannot see: a wall joined to the outer surface. That needs the material between the two to be pierced
(the sdf positive across the whole shell somewhere), and then the mesh *is* a hollow with an opening, the same
shape as a real cup; telling a pinhole from a real opening would take a size rule. With an exact sdf (what the
decoders are trained on) the wall came out as a separate part on every shape tried (the demo shape set, 4 x 32
and 4 x 64 grids), and still did with random sdf noise of half a fine voxel; it joined the outer surface only
under a full voxel of noise (1 shape in 20), or under half a voxel when the occupancy also reached half a coarse
voxel past the surface, which puts the surface deeper in the shell (a sphere: joined; a box: not).

Winding numbers (`ray_winding`) are counted along one ray per point: the sum over the faces the ray crosses of
the sign of (normal . ray direction). For a closed surface this is exact, whatever its shape, and it costs one
pass over the faces: faces and points are projected onto the plane across the ray, binned in a 2D grid, and
only faces whose bounding box shares a cell with a point are tested. The ray runs along a fixed direction that
no axis or lattice diagonal is close to, so it hardly ever grazes an edge of a voxel-aligned mesh; a sample
whose ray does (or passes a pinhole) is outvoted by the others.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix

SAMPLES_PER_PART = 32  # sample points per part (face centroids); fewer when the part has fewer faces
MAJORITY = 0.75  # fraction of a part's samples that must agree before it is dropped
MAX_GRID = 1024  # cells per side of the 2D binning grid at most


def _ray_frame() -> np.ndarray:
    """(3, 3) rows e1, e2, d: an orthonormal, right-handed frame whose d is the ray direction."""
    d = np.array([0.5263, 0.3219, 0.7872])  # no axis or lattice diagonal near it
    d /= np.linalg.norm(d)
    e1 = np.cross(d, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(d, e1), d])


RAY_FRAME = _ray_frame()


def find_inner_walls(vertices: np.ndarray, faces: np.ndarray, face_part: np.ndarray, volume: np.ndarray,
                     area: np.ndarray, seed: int = 0) -> np.ndarray:
    """(P,) bool: which parts are inner walls (see the module docstring).

    vertices (V, 3) float; faces (F, 3) int; face_part (F,) the part of each face in 0..P-1; volume, area (P,)
    signed volume (positive when wound outward) and area per part, as `cleanup.part_stats` gives them.
    Parts with no faces are never walls. Sample faces are drawn with a fixed `seed`, so the answer is repeatable.
    """
    n_parts = volume.shape[0]
    # A part needs a clear orientation to face away from anything (the threshold `turn_parts_outward` uses).
    oriented = np.abs(volume) >= 1e-3 * area ** 1.5
    counts = np.bincount(face_part, minlength=n_parts)
    if n_parts < 2 or not oriented[counts > 0].any():
        return np.zeros(n_parts, bool)
    # 1. Sample faces: up to SAMPLES_PER_PART per part, drawn within the part (faces grouped by a counting sort).
    by_part = csr_matrix((np.ones(faces.shape[0], np.int8), (face_part, np.arange(faces.shape[0]))),
                         shape=(n_parts, faces.shape[0]))
    take = np.minimum(counts, SAMPLES_PER_PART)
    sample_part = np.repeat(np.arange(n_parts), take)
    u = np.random.default_rng(seed).random(sample_part.shape[0])
    sample_face = by_part.indices[by_part.indptr[sample_part] + (u * counts[sample_part]).astype(np.int64)]
    points = vertices[faces[sample_face]].mean(axis=1)
    # 2. Winding number of the other parts at each sample, and the vote.
    w = np.rint(ray_winding(vertices, faces, points, face_part, sample_part))
    opposed = w * np.sign(volume[sample_part]) <= -1
    votes = np.bincount(sample_part, weights=opposed, minlength=n_parts)
    return oriented & (votes >= MAJORITY * np.maximum(take, 1))  # a part without faces gets no votes


def ray_winding(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray,
                face_part: np.ndarray | None = None, point_part: np.ndarray | None = None) -> np.ndarray:
    """Winding number (float, integral for closed surfaces) of `faces` around each of `points` (S, 3).

    With face_part (F,) and point_part (S,), a point only counts the faces of parts other than its own (so a
    point sampled on a surface does not count that surface). Faces wound counter-clockwise seen from outside
    give +1 inside a closed surface.
    """
    q = np.asarray(points, np.float64) @ RAY_FRAME.T  # (S, 3): u, w across the ray, t along it
    pair_face, pair_point = _face_point_pairs(vertices, faces, q[:, :2])
    if point_part is not None and face_part is not None:
        other = face_part[pair_face] != point_part[pair_point]
        pair_face, pair_point = pair_face[other], pair_point[other]
    # Does the ray from the point cross the face? Barycentric coordinates in the (u, w) plane, then depth.
    corners = faces[pair_face]  # (M, 3)
    a, b, c = (vertices[corners[:, k]].astype(np.float64) @ RAY_FRAME.T for k in range(3))  # (M, 3) each
    x = q[pair_point]  # (M, 3)
    area2 = _cross2(b - a, c - a)  # (M,) twice the signed projected area; its sign is that of normal . d
    la = _cross2(c - b, x - b)
    lb = _cross2(a - c, x - c)
    lc = _cross2(b - a, x - a)
    s = np.sign(area2)
    inside = (la * s >= 0) & (lb * s >= 0) & (lc * s >= 0) & (area2 != 0)
    depth = (la * a[:, 2] + lb * b[:, 2] + lc * c[:, 2]) / np.where(inside, area2, 1.0)
    crossed = inside & (depth > x[:, 2])
    return np.bincount(pair_point[crossed], weights=s[crossed], minlength=q.shape[0])


def _face_point_pairs(vertices: np.ndarray, faces: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(face, point) pairs that may meet across the ray: the point's 2D grid cell is one the face's box covers.

    xy (S, 2) are the points' (u, w). Cells are about twice the mean face size, so a face covers a few cells.
    Only integer cell numbers are gathered per face; a summed-area table of the cells that hold points then
    skips, in one vectorised test, every face whose cells hold none (nearly all of them).
    """
    u = vertices @ RAY_FRAME[0].astype(vertices.dtype)  # (V,) each; 1-D arrays reduce and index fastest
    w = vertices @ RAY_FRAME[1].astype(vertices.dtype)
    lo = np.array([min(u.min(), xy[:, 0].min()), min(w.min(), xy[:, 1].min())], np.float64)
    span = max(max(u.max(), xy[:, 0].max()) - lo[0], max(w.max(), xy[:, 1].max()) - lo[1]) + 1e-12
    few = faces[:: max(1, faces.shape[0] // 4096)]  # mean face size from a spread-out subset of the faces
    extent = np.maximum(np.ptp(u[few], axis=1), np.ptp(w[few], axis=1))
    size = max(2.0 * float(extent.mean()), span / MAX_GRID)
    n = int(span / size) + 2
    # Cell numbers fit int16 (n <= MAX_GRID + 2): small arrays that stay in cache for the gathers below.
    cu = ((u - lo[0]) / size).astype(np.int16)  # (V,), truncation = floor for these non-negative values
    cw = ((w - lo[1]) / size).astype(np.int16)
    point_cell = np.floor((xy - lo) / size).astype(np.int64)  # (S, 2)
    f0, f1, f2 = faces[:, 0], faces[:, 1], faces[:, 2]
    u0, u1, u2, w0, w1, w2 = cu[f0], cu[f1], cu[f2], cw[f0], cw[f1], cw[f2]
    i0 = np.minimum(np.minimum(u0, u1), u2).astype(np.intp)  # (F,) cell rectangle of each face, inclusive
    i1 = np.maximum(np.maximum(u0, u1), u2).astype(np.intp) + 1  # ... exclusive from here on
    j0 = np.minimum(np.minimum(w0, w1), w2).astype(np.intp)
    j1 = np.maximum(np.maximum(w0, w1), w2).astype(np.intp) + 1
    # Faces whose cell rectangle holds a point: summed-area table of point counts, (n + 1, n + 1), read flat.
    held = np.zeros((n + 1, n + 1), np.int32)
    np.add.at(held, (point_cell[:, 0] + 1, point_cell[:, 1] + 1), 1)
    table = held.cumsum(axis=0).cumsum(axis=1).ravel()
    row0, row1 = i0 * (n + 1), i1 * (n + 1)
    hits = table[row1 + j1] - table[row0 + j1] - table[row1 + j0] + table[row0 + j0]
    face = np.flatnonzero(hits)
    i1, j1 = i1[face] - 1, j1[face] - 1
    # Expand those faces to their cells, keep the cells with points, then pair with each point of the cell.
    i0, j0 = i0[face].astype(np.int64), j0[face].astype(np.int64)
    width = j1 - j0 + 1
    cells_per_face = (i1 - i0 + 1) * width
    k = _ranges(np.zeros_like(cells_per_face), cells_per_face)
    face, i0, j0, width = (np.repeat(x, cells_per_face) for x in (face, i0, j0, width))
    key = (i0 + k // width) * n + j0 + k % width
    point_key = point_cell[:, 0] * n + point_cell[:, 1]
    order = np.argsort(point_key, kind="stable")
    sorted_keys = point_key[order]
    start = np.searchsorted(sorted_keys, key, side="left")
    count = np.searchsorted(sorted_keys, key, side="right") - start
    return np.repeat(face, count), order[_ranges(start, count)]


def _ranges(start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start[i], start[i] + count[i]) over i, vectorised."""
    total = int(count.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offset = np.cumsum(count) - count  # where each range begins in the output
    return np.arange(total, dtype=np.int64) - np.repeat(offset - start, count)


def _cross2(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z of the cross product of the (u, w) parts of (M, >=2) arrays."""
    return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
