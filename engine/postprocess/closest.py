"""Closest points on a triangle mesh, for many query points at once (colour transfer, distance measures).

`SurfaceQuery(vertices, faces)` indexes the mesh once: its face centroids for nearest-neighbour queries
(`neighbours.NearestNeighbours`: a grid on the GPU, scipy's k-d tree on the CPU), each vertex's incident faces
(CSR), and a per-face table of what a point-to-face test needs. `closest` runs in two
rounds, vectorised in torch (CPU or CUDA):

1. The face with the nearest centroid. When the point's projection on that face's plane falls inside the face
   (about 80 % of texel points on a decoder mesh), that projection is the answer.
2. Otherwise the closest point of that face lies on its border, and every face around the corner nearest that
   point is a candidate (this fan holds the faces across both edges the point can lie on). Candidates are
   ranked by a cheap score (plane distance and how far outside the triangle the projection falls); the winner
   is then solved exactly.

`closest_near` skips the centroid search when a good guess is known (the face found for a neighbouring texel): the
guess, then the fan around it, and `closest` only for the points neither holds.

The answer on a face is exact (the plane projection inside, else the nearest edge point). On a fine, evenly
tessellated surface this finds the true closest face for all but a fraction of a percent of points near the
surface; those get the closest point of a neighbouring face, only slightly farther. All per-point arithmetic is
written per coordinate (structure of arrays): torch's gathers and reductions over a trailing dimension of 3
are several times slower than plain 1-D operations on CPU.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csr_matrix

from .neighbours import NearestNeighbours

CHUNK = {"cuda": 1 << 22}  # query points per chunk, by device type (see bake.CHUNK)
CPU_CHUNK = 1 << 19

# Rows of the per-face table (`_face_table`), each (F,)
_A, _G1, _G2, _N, _H, _E1, _E2 = 0, 3, 6, 9, 12, 15, 18
_ROWS = 21
_SCORE_ROWS = 15  # rows a candidate score needs (a, g1, g2, n, h)


class SurfaceQuery:
    """Closest-point queries against one triangle mesh. Build once, query many times."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.vertices = torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float32)).to(self.device)
        self.faces = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.int64)).to(self.device)
        nv, nf = self.vertices.shape[0], self.faces.shape[0]
        self.table = _face_table(self.vertices, self.faces)  # (_ROWS, F)
        self.score_table = self.table[:_SCORE_ROWS].contiguous()
        t = self.table
        centroids = torch.stack([t[_A + k] + (t[_E1 + k] + t[_E2 + k]) / 3.0 for k in range(3)], dim=1)
        # On CUDA a grid: the texel queries of a bake stay on the device (a k-d tree costs a round trip per chunk).
        self.centroids = NearestNeighbours(centroids.cpu().numpy(), 1, self.device)
        # Faces around each vertex (a linear-time counting sort through scipy's CSR construction).
        f = self.faces.cpu().numpy()
        incidence = csr_matrix((np.ones(3 * nf, np.int8), (f.ravel(), np.repeat(np.arange(nf), 3))), shape=(nv, nf))
        self.incident = torch.from_numpy(incidence.indices.astype(np.int64)).to(self.device)  # face ids by vertex
        self.start = torch.from_numpy(incidence.indptr[:-1].astype(np.int64)).to(self.device)  # (V,)
        self.valence = torch.from_numpy(np.diff(incidence.indptr).astype(np.int64)).to(self.device)  # (V,)

    def closest(self, points: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3) points -> (face (N,) int64, barycentrics (N, 3) float32, squared distance (N,) float32)."""
        points = torch.as_tensor(points, dtype=torch.float32).to(self.device)
        chunk = CHUNK.get(self.device.type, CPU_CHUNK)
        parts = [self._closest_chunk(points[i:i + chunk]) for i in range(0, points.shape[0], chunk)]
        if not parts:
            empty = torch.zeros(0, device=self.device)
            return empty.long(), empty.reshape(0, 3), empty
        face, bary, d2 = (torch.cat(x) for x in zip(*parts))
        return face, bary, d2

    def closest_near(self, points: torch.Tensor, guess: torch.Tensor):
        """Like `closest`, starting from a guessed face per point (the answer for a nearby point).

        Where the guess, or a face of the fan around its corner nearest the point, holds the point's projection,
        that is the answer; the other points go through `closest`.
        """
        points = torch.as_tensor(points, dtype=torch.float32).to(self.device)
        face = guess.to(self.device).clone()
        bary, d2, inside = self._solve(points, face)
        redo = torch.nonzero(~inside).squeeze(1)
        if redo.numel():
            f, b, d, ins = self._fan_search(points[redo], face[redo], bary[redo])
            face[redo], bary[redo], d2[redo] = f, b, d
            lost = redo[~ins]
            if lost.numel():
                f, b, d = self.closest(points[lost])
                better = d < d2[lost]
                sel = lost[better]
                face[sel], bary[sel], d2[sel] = f[better], b[better], d[better]
        return face, bary, d2

    def interpolate(self, values: torch.Tensor, face: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
        """Per-vertex `values` (V, C) at surface points given by (face, barycentrics) -> (N, C)."""
        corner = self.faces[face]  # (N, 3)
        out = values.index_select(0, corner[:, 0]) * bary[:, 0:1]
        out += values.index_select(0, corner[:, 1]) * bary[:, 1:2]
        out += values.index_select(0, corner[:, 2]) * bary[:, 2:3]
        return out

    def _closest_chunk(self, p: torch.Tensor):
        # 1. The face with the nearest centroid; done where the projection falls inside it.
        face = self.centroids.query(p.detach())[1][:, 0]
        bary, d2, inside = self._solve(p, face)
        redo = torch.nonzero(~inside).squeeze(1)
        if redo.numel():
            # 2. Elsewhere: the best face of the fan around the corner nearest the point.
            f, b, d, _ = self._fan_search(p[redo], face[redo], bary[redo])
            better = d < d2[redo]
            sel = redo[better]
            face[sel], bary[sel], d2[sel] = f[better], b[better], d[better]
        return face, bary, d2

    def _fan_search(self, q: torch.Tensor, face: torch.Tensor, bary: torch.Tensor):
        """Best face among those around the corner of `face` with the largest barycentric (ragged, flattened).

        Returns (face, barycentrics, squared distance, inside) of the winner for each point.
        """
        n = q.shape[0]
        corner = self.faces[face].gather(1, bary.argmax(dim=1, keepdim=True)).squeeze(1)  # (n,)
        count = self.valence[corner]
        owner = torch.repeat_interleave(torch.arange(n, device=self.device), count)  # (M,) point of each candidate
        first = torch.cumsum(count, 0) - count
        slot = torch.arange(owner.shape[0], device=self.device) - torch.repeat_interleave(first, count)
        cand = self.incident[self.start[corner][owner] + slot]  # (M,) face ids
        score = _candidate_score(q.T.contiguous().index_select(1, owner), self.score_table.index_select(1, cand))
        best = torch.full((n,), float("inf"), device=self.device).scatter_reduce(0, owner, score, reduce="amin")
        is_best = score == best[owner]
        pick = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        pick.scatter_reduce_(0, owner[is_best], torch.nonzero(is_best).squeeze(1), reduce="amax")
        new_face = cand[pick]
        new_bary, new_d2, inside = self._solve(q, new_face)
        return new_face, new_bary, new_d2, inside

    def _solve(self, p: torch.Tensor, face: torch.Tensor):
        """Exact closest point of each point p (N, 3) on its face -> (barycentrics, squared distance, inside)."""
        return _closest_on_face(p.T, self.table, face)


def closest_on_triangles(p: torch.Tensor, tri: torch.Tensor):
    """Point (M, 3) against triangle (M, 3 corners, 3) -> (barycentrics (M, 3), squared distance (M,), inside (M,)).

    Exact: the plane projection when it falls inside the triangle (`inside`), else the nearest point of the three
    edges. A degenerate (zero-area) triangle is handled by its edges.
    """
    m = tri.shape[0]
    table = _face_table(tri.reshape(-1, 3), torch.arange(m * 3, device=tri.device).reshape(-1, 3))
    return _closest_on_face(p.T, table, torch.arange(m, device=tri.device))


def _closest_on_face(p: torch.Tensor, table: torch.Tensor, face: torch.Tensor):
    """Points p (3, N) against faces `face` (N,) of `table` (_ROWS, F) -> (bary (N, 3), d2 (N,), inside (N,)).

    Only the rows the plane projection needs are gathered for every point; the edges only where it falls
    outside the face (the memory traffic of the gathers is most of the cost).
    """
    t = table[:_N + 3].index_select(1, face)  # a, g1, g2, n: (12, N)
    w = [p[k] - t[_A + k] for k in range(3)]
    b1 = w[0] * t[_G1] + w[1] * t[_G1 + 1] + w[2] * t[_G1 + 2]
    b2 = w[0] * t[_G2] + w[1] * t[_G2 + 1] + w[2] * t[_G2 + 2]
    b0 = 1.0 - b1 - b2
    degenerate = (t[_G1] == 0) & (t[_G1 + 1] == 0) & (t[_G1 + 2] == 0)
    inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0) & ~degenerate
    plane = w[0] * t[_N] + w[1] * t[_N + 1] + w[2] * t[_N + 2]
    d2 = plane * plane
    bary = torch.stack([b0, b1, b2], dim=1)
    out = torch.nonzero(~inside).squeeze(1)
    if out.numel():
        # Nearest point of each edge (corner i -> corner j at parameter s), then of the nearest edge. Corners
        # relative to a: 0, e1, e2; the point relative to a: w.
        edges = table[_E1:_E2 + 3].index_select(1, face[out])  # (6, M)
        wo = [x[out] for x in w]
        e1, e2 = [edges[k] for k in range(3)], [edges[3 + k] for k in range(3)]
        zero = [torch.zeros_like(wo[0])] * 3
        corners = (zero, e1, e2)
        best_d2 = torch.full_like(wo[0], float("inf"))
        best = torch.zeros((out.numel(), 3), device=p.device)
        for i, j in ((0, 1), (1, 2), (2, 0)):
            ci, cj = corners[i], corners[j]
            edge = [cj[k] - ci[k] for k in range(3)]
            rel = [wo[k] - ci[k] for k in range(3)]
            length2 = (edge[0] * edge[0] + edge[1] * edge[1] + edge[2] * edge[2]).clamp(min=1e-30)
            s = ((rel[0] * edge[0] + rel[1] * edge[1] + rel[2] * edge[2]) / length2).clamp(0.0, 1.0)
            dist2 = sum((rel[k] - s * edge[k]) ** 2 for k in range(3))
            closer = dist2 < best_d2
            edge_bary = torch.zeros_like(best)
            edge_bary[:, i] = 1.0 - s
            edge_bary[:, j] = s
            best = torch.where(closer[:, None], edge_bary, best)
            best_d2 = torch.where(closer, dist2, best_d2)
        bary[out] = best
        d2[out] = best_d2
    return bary, d2, inside


def _face_table(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per face, as rows (structure of arrays: one gather per row): corner a (3) | dual basis g1 (3), g2 (3) with
    b1 = g1.(p-a), b2 = g2.(p-a) (zero for a degenerate face) | unit normal (3) | altitudes h_i of the corners
    over their opposite edges (3) | edges e1 = b - a (3), e2 = c - a (3)."""
    v = vertices.T.contiguous()  # (3, V)
    a = v.index_select(1, faces[:, 0])  # (3, F)
    e1 = v.index_select(1, faces[:, 1]) - a
    e2 = v.index_select(1, faces[:, 2]) - a
    d11, d12, d22 = _dot(e1, e1), _dot(e1, e2), _dot(e2, e2)
    det = d11 * d22 - d12 * d12
    ok = det > 1e-12 * (d11 * d22).clamp(min=1e-30)
    inv = torch.where(ok, 1.0 / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    g1 = (d22 * e1 - d12 * e2) * inv
    g2 = (d11 * e2 - d12 * e1) * inv
    normal = torch.stack([e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]])
    area2 = _dot(normal, normal).sqrt()
    normal = normal / area2.clamp(min=1e-30)
    opposite = torch.stack([_dot(e2 - e1, e2 - e1), d22, d11]).sqrt()  # edges opposite corners 0, 1, 2
    altitude = area2 / opposite.clamp(min=1e-30)
    return torch.cat([a, g1, g2, normal, altitude, e1, e2], dim=0)  # (_ROWS, F)


def _dot(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Column-wise dot product of (3, N) tensors -> (N,)."""
    return u[0] * w[0] + u[1] * w[1] + u[2] * w[2]


def _candidate_score(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Approximate squared distance from points p (3, M) to candidate faces t (_SCORE_ROWS, M).

    Plane distance squared plus the squared distance outside the triangle's edges estimated from the negative
    barycentrics (-b_i * h_i is the distance beyond edge i); a degenerate face scores its corner a's distance.
    """
    wx, wy, wz = p[0] - t[_A], p[1] - t[_A + 1], p[2] - t[_A + 2]
    b1 = wx * t[_G1] + wy * t[_G1 + 1] + wz * t[_G1 + 2]
    b2 = wx * t[_G2] + wy * t[_G2 + 1] + wz * t[_G2 + 2]
    plane = wx * t[_N] + wy * t[_N + 1] + wz * t[_N + 2]
    out = torch.relu(b1 + b2 - 1.0) * t[_H] + torch.relu(-b1) * t[_H + 1] + torch.relu(-b2) * t[_H + 2]
    score = plane * plane + out * out
    degenerate = (t[_G1] == 0) & (t[_G1 + 1] == 0) & (t[_G1 + 2] == 0)
    return torch.where(degenerate, wx * wx + wy * wy + wz * wz, score)
