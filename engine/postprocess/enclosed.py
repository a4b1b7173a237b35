"""Surfaces buried inside other surfaces: the "inner wall" that interior pruning leaves in a decoder mesh.

Why it exists: the pipeline keeps only the surface shell of the occupied voxels (`occupancy.keep_surface`), and
FlexiCubes takes every lattice point of the pruned interior as outside. So besides the true outer surface, a
second closed surface forms about one coarse voxel further in, wound inward (its normals point into the pruned
hole). It is invisible, and it doubles the faces that decimation and clean-up work on. The pipeline's own
extraction no longer makes it (`mesh_extraction`'s `seal_block` counts the pruned interior as inside); this pass
stays for meshes extracted the official way and for sealed cavities in meshes from elsewhere.

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

Everything runs in torch on the device of the tensors it is given (CUDA or CPU): no loop over faces, parts or
points, and a handful of host reads (sizes of the arrays to come). The random sample draws are made on the host,
so the answer is the same on every device.
"""
from __future__ import annotations

import numpy as np
import torch

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


def find_inner_walls(vertices: torch.Tensor, faces: torch.Tensor, face_part: torch.Tensor, volume: torch.Tensor,
                     area: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(P,) bool: which parts are inner walls (see the module docstring), on the tensors' device.

    vertices (V, 3) float; faces (F, 3) int64; face_part (F,) int64, the part of each face in 0..P-1; volume,
    area (P,) signed volume (positive when wound outward) and area per part, as `cleanup.part_stats` gives them.
    Parts with no faces are never walls. Sample faces are drawn with a fixed `seed`, so the answer is repeatable
    (and the same on every device: the draws are made on the host).
    """
    n_parts = volume.shape[0]
    device = faces.device
    # A part needs a clear orientation to face away from anything (the threshold `turn_parts_outward` uses).
    oriented = volume.abs() >= 1e-3 * area ** 1.5
    counts = torch.bincount(face_part, minlength=n_parts)
    if n_parts < 2 or not bool(oriented[counts > 0].any()):
        return torch.zeros(n_parts, dtype=torch.bool, device=device)
    # 1. Sample faces: up to SAMPLES_PER_PART per part, the k-th face (in index order) of the part for a random k.
    take = counts.clamp(max=SAMPLES_PER_PART)
    sample_part = torch.repeat_interleave(torch.arange(n_parts, device=device), take)  # (S,)
    u = torch.from_numpy(np.random.default_rng(seed).random(sample_part.shape[0])).to(device)
    by_part = torch.sort(face_part, stable=True).indices  # (F,) faces grouped by part, in index order within
    start = torch.cumsum(counts, 0) - counts
    sample_face = by_part[start[sample_part] + (u * counts[sample_part]).long()]
    points = vertices[faces[sample_face]].to(torch.float64).mean(dim=1)  # (S, 3) face centroids
    # 2. Winding number of the other parts at each sample, and the vote.
    w = torch.round(ray_winding(vertices, faces, points, face_part, sample_part))
    opposed = w * torch.sign(volume[sample_part]) <= -1
    votes = torch.zeros(n_parts, dtype=torch.float64, device=device).index_add_(0, sample_part, opposed.double())
    return oriented & (votes >= MAJORITY * take.clamp(min=1))  # a part without faces gets no votes


def ray_winding(vertices: torch.Tensor, faces: torch.Tensor, points: torch.Tensor,
                face_part: torch.Tensor | None = None, point_part: torch.Tensor | None = None) -> torch.Tensor:
    """Winding number (float64, integral for closed surfaces) of `faces` around each of `points` (S, 3): (S,).

    vertices (V, 3) float, faces (F, 3) int64, on one device. With face_part (F,) and point_part (S,), a point
    only counts the faces of parts other than its own (so a point sampled on a surface does not count that
    surface). Faces wound counter-clockwise seen from outside give +1 inside a closed surface.
    """
    frame = torch.as_tensor(RAY_FRAME, dtype=torch.float64, device=vertices.device)
    q = points.to(torch.float64) @ frame.T  # (S, 3): u, w across the ray, t along it
    pair_face, pair_point = _face_point_pairs(vertices, faces, q[:, :2])
    if point_part is not None and face_part is not None:
        other = torch.nonzero(face_part.index_select(0, pair_face) != point_part.index_select(0, pair_point))
        pair_face, pair_point = pair_face.index_select(0, other[:, 0]), pair_point.index_select(0, other[:, 0])
    # Does the ray from the point cross the face? Barycentric coordinates in the (u, w) plane, then depth.
    corners = faces.index_select(0, pair_face)  # (M, 3)
    a, b, c = (vertices.index_select(0, corners[:, k]).to(torch.float64) @ frame.T for k in range(3))  # (M, 3)
    x = q.index_select(0, pair_point)  # (M, 3)
    area2 = _cross2(b - a, c - a)  # (M,) twice the signed projected area; its sign is that of normal . d
    la = _cross2(c - b, x - b)
    lb = _cross2(a - c, x - c)
    lc = _cross2(b - a, x - a)
    s = torch.sign(area2)
    inside = (la * s >= 0) & (lb * s >= 0) & (lc * s >= 0) & (area2 != 0)
    depth = (la * a[:, 2] + lb * b[:, 2] + lc * c[:, 2]) / torch.where(inside, area2, torch.ones_like(area2))
    crossed = inside & (depth > x[:, 2])
    return torch.zeros(q.shape[0], dtype=torch.float64, device=q.device).index_add_(
        0, pair_point[crossed], s[crossed])


def _face_point_pairs(vertices: torch.Tensor, faces: torch.Tensor, xy: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(face, point) pairs that may meet across the ray: the point's 2D grid cell is one the face's box covers.

    xy (S, 2) are the points' (u, w). Cells are about twice the mean face size, so a face covers a few cells.
    Only integer cell numbers are gathered per face; a summed-area table of the cells that hold points then
    skips, in one vectorised test, every face whose cells hold none (nearly all of them). Host reads: the grid's
    size, then the sizes of the arrays to come.
    """
    frame = torch.as_tensor(RAY_FRAME[:2], dtype=torch.float64, device=vertices.device)
    v64 = vertices.to(torch.float64)
    u, w = v64 @ frame[0], v64 @ frame[1]  # (V,) each; 1-D tensors reduce and index fastest
    few = faces[:: max(1, faces.shape[0] // 4096)]  # mean face size from a spread-out subset of the faces
    extent = torch.maximum(_ptp(u[few]), _ptp(w[few])).mean()
    bounds = torch.stack([torch.minimum(u.min(), xy[:, 0].min()), torch.minimum(w.min(), xy[:, 1].min()),
                          torch.maximum(u.max(), xy[:, 0].max()), torch.maximum(w.max(), xy[:, 1].max()), extent])
    u_lo, w_lo, u_hi, w_hi, extent = bounds.tolist()  # the first host read
    span = max(u_hi - u_lo, w_hi - w_lo) + 1e-12
    size = max(2.0 * extent, span / MAX_GRID)
    n = int(span / size) + 2
    cu = ((u - u_lo) / size).to(torch.int32)  # (V,), truncation = floor for these non-negative values
    cw = ((w - w_lo) / size).to(torch.int32)
    lo = torch.tensor([u_lo, w_lo], dtype=torch.float64, device=xy.device)
    point_cell = torch.floor((xy - lo) / size).long()  # (S, 2)
    # Per face: int32 cell numbers (n + 1)^2 < 2^31, gathered with index_select (on the CPU several times
    # faster than cu[faces]), so the passes over all faces move as few bytes as they can.
    flat = faces.reshape(-1)
    cu_f, cw_f = cu.index_select(0, flat).view(-1, 3), cw.index_select(0, flat).view(-1, 3)  # (F, 3) each
    i0, i1 = cu_f.amin(1), cu_f.amax(1).add_(1)  # (F,) cell rectangle of each face, i1/j1 exclusive
    j0, j1 = cw_f.amin(1), cw_f.amax(1).add_(1)
    # Faces whose cell rectangle holds a point: summed-area table of point counts, (n + 1, n + 1), read flat.
    held = torch.bincount((point_cell[:, 0] + 1) * (n + 1) + point_cell[:, 1] + 1, minlength=(n + 1) ** 2)
    table = held.view(n + 1, n + 1).cumsum(0).cumsum(1).reshape(-1).int()
    row0, row1 = i0 * (n + 1), i1 * (n + 1)
    hits = table.index_select(0, row1 + j1)
    hits -= table.index_select(0, row0 + j1)
    hits -= table.index_select(0, row1 + j0)
    hits += table.index_select(0, row0 + j0)
    face = torch.nonzero(hits).squeeze(1)
    i0, j0, i1, j1 = (x.index_select(0, face).long() for x in (i0, j0, i1 - 1, j1 - 1))
    # Expand those faces to their cells, keep the cells with points, then pair with each point of the cell.
    width = j1 - j0 + 1
    cells_per_face = (i1 - i0 + 1) * width
    k = _ranges(torch.zeros_like(cells_per_face), cells_per_face)
    face, i0, j0, width = (torch.repeat_interleave(x, cells_per_face) for x in (face, i0, j0, width))
    key = (i0 + k // width) * n + j0 + k % width
    sorted_keys, order = torch.sort(point_cell[:, 0] * n + point_cell[:, 1], stable=True)
    start = torch.searchsorted(sorted_keys, key, side="left")
    count = torch.searchsorted(sorted_keys, key, side="right") - start
    return torch.repeat_interleave(face, count), order[_ranges(start, count)]


def _ranges(start: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(start[i], start[i] + count[i]) over i, vectorised (one host read: the total)."""
    total = int(count.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=count.device)
    offset = torch.cumsum(count, 0) - count  # where each range begins in the output
    return (torch.arange(total, dtype=torch.int64, device=count.device)
            - torch.repeat_interleave(offset - start, count, output_size=total))


def _ptp(x: torch.Tensor) -> torch.Tensor:
    """Peak to peak along the last axis."""
    return x.amax(-1) - x.amin(-1)


def _cross2(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """z of the cross product of the (u, w) parts of (M, >=2) tensors."""
    return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
