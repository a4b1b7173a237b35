"""Quadric error metric: per-vertex plane quadrics and the best place for two merged vertices (torch, CPU or CUDA).

A quadric sums w * (n . x + d)^2 over planes (unit normal n, offset d, weight w): the weighted squared distance
of a point x to those planes. It is a symmetric 4 x 4 matrix sum(w p p^T) with p = (n, d), kept as its 10
distinct entries, in this order:

    0: nx nx   1: nx ny   2: nx nz   3: nx d   4: ny ny   5: ny nz   6: ny d   7: nz nz   8: nz d   9: d d

so that with A = [[q0 q1 q2] [q1 q4 q5] [q2 q5 q7]] and b = (q3, q6, q8) the error is x.A.x + 2 b.x + q9.
Merging vertices adds their quadrics, so an edge's quadric is the sum of its two ends'.

Layout: structure of arrays, one row per entry or coordinate (quadrics (10, N), points (3, N)): every step is then
a plain 1-D operation, several times faster on CPU than work across a trailing dimension of 10 or 3. Everything
is float64: the error of a point close to its planes is a small difference of large terms, which float32 loses.
Letters: V vertices, F faces, B border half-edges, N anything (planes, edges, points).
"""
from __future__ import annotations

import torch

BOUNDARY_WEIGHT = 10.0  # a border edge's penalty plane weighs this x its squared length (a face's plane: its area)
SOLVE_MIN_DET = 1e-9  # |det A| below this x (trace A / 3)^3: the 3 x 3 solve is ill-conditioned, not used
SOLVE_MAX_REACH = 1.0  # the solved point may lie at most this many edge lengths from the edge's midpoint


def vertex_quadrics(positions: torch.Tensor, faces: torch.Tensor, border: torch.Tensor) -> torch.Tensor:
    """(3, V) float64 positions, (F, 3) int64 faces, (B,) border half-edge ids -> (10, V) float64 quadrics.

    Each face adds its plane, weighted by its area, to its three corners. Each border half-edge h = 3 f + k
    (corner k to corner k + 1 of face f, the only face on that edge) adds a plane through the edge and
    perpendicular to the face to both its ends: moving a border vertex off its border line then costs, so open
    borders keep their shape. Degenerate faces (no normal) add nothing.
    """
    by_corner = faces.T.contiguous()  # (3, F)
    corners = [positions.index_select(1, by_corner[k]) for k in range(3)]  # 3 x (3, F)
    cross = torch.linalg.cross(corners[1] - corners[0], corners[2] - corners[0], dim=0)  # (3, F), 2 x area
    double_area = cross.norm(dim=0)
    normal = cross / double_area.clamp(min=1e-300)
    face_q = plane_quadrics(normal, -(normal * corners[0]).sum(0), 0.5 * double_area)  # (10, F)
    quadrics = torch.zeros(10, positions.shape[1], dtype=positions.dtype, device=positions.device)
    for k in range(3):
        quadrics.index_add_(1, by_corner[k], face_q)

    face, corner = border // 3, border % 3
    start = faces.reshape(-1).index_select(0, border)  # (B,)
    end = faces.reshape(-1).index_select(0, 3 * face + (corner + 1) % 3)
    p_start = positions.index_select(1, start)  # (3, B)
    along = positions.index_select(1, end) - p_start
    side = torch.linalg.cross(along, normal.index_select(1, face), dim=0)  # in the face's plane, across the edge
    side = side / side.norm(dim=0).clamp(min=1e-300)
    edge_q = plane_quadrics(side, -(side * p_start).sum(0), BOUNDARY_WEIGHT * (along * along).sum(0))  # (10, B)
    quadrics.index_add_(1, start, edge_q)
    quadrics.index_add_(1, end, edge_q)
    return quadrics


def plane_quadrics(normal: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(3, N) unit normals, (N,) offsets d, (N,) weights -> (10, N) quadrics of the planes n . x + d = 0."""
    p = torch.cat([normal, offset[None]])  # (4, N)
    rows, cols = _UPPER
    return weight * p[rows] * p[cols]


def quadric_error(quadrics: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(10, N) quadrics, (3, N) points -> (N,) errors x.A.x + 2 b.x + c."""
    q = quadrics
    x, y, z = points
    return (x * (q[0] * x + 2.0 * (q[1] * y + q[2] * z + q[3]))
            + y * (q[4] * y + 2.0 * (q[5] * z + q[6]))
            + z * (q[7] * z + 2.0 * q[8]) + q[9])


def best_position(quadrics: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where to put the vertex that replaces an edge's two ends, and the quadric error there.

    (10, N) edge quadrics, (3, N) end positions -> (position (3, N), error (N,)). The candidates are the point of
    least error (A x = -b, by the adjugate) when A is well-conditioned and that point lies within
    `SOLVE_MAX_REACH` edge lengths of the midpoint, then the two ends and the midpoint; the cheapest wins (the
    first of equal ones, in that order).
    """
    q = quadrics
    a00, a01, a02, a11, a12, a22 = q[0], q[1], q[2], q[4], q[5], q[7]
    # Adjugate of the symmetric A (its cofactors), so A^-1 = adj / det.
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    bx, by, bz = q[3], q[6], q[8]
    minus_inv = -1.0 / torch.where(det == 0, torch.ones_like(det), det)
    solved = torch.stack([(c00 * bx + c01 * by + c02 * bz) * minus_inv,
                          (c01 * bx + c11 * by + c12 * bz) * minus_inv,
                          (c02 * bx + c12 * by + c22 * bz) * minus_inv])  # (3, N)
    middle = 0.5 * (start + end)
    trace = (a00 + a11 + a22) / 3.0
    usable = (det.abs() > SOLVE_MIN_DET * trace.abs() ** 3) & (det != 0) \
        & (((solved - middle) ** 2).sum(0) <= SOLVE_MAX_REACH ** 2 * ((end - start) ** 2).sum(0)) \
        & torch.isfinite(solved).all(0)

    position = torch.where(usable, solved, middle)
    error = quadric_error(q, position)
    for candidate in (start, end, middle):
        candidate_error = quadric_error(q, candidate)
        better = candidate_error < error
        error = torch.where(better, candidate_error, error)
        position = torch.where(better, candidate, position)
    return position, error


# (row, column) of each stored entry of the symmetric 4 x 4 matrix p p^T, in the module docstring's order
_UPPER = ([0, 0, 0, 0, 1, 1, 1, 2, 2, 3], [0, 1, 2, 3, 1, 2, 3, 2, 3, 3])
