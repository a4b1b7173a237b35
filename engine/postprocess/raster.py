"""Rasterising UV triangles into texels, vectorised in torch (CPU or CUDA): which face covers each texel, where.

Texture space: a `size` x `size` image, row 0 at the top. A UV (u, v) with the origin at the bottom-left sits at
image point (x, y) = (u * size, (1 - v) * size); texel (row r, column c) has its centre at (c + 0.5, r + 0.5).

Coverage is *conservative at chart borders*: besides the texels whose centres lie inside a triangle, a triangle
claims the texels within `margin` texels beyond its chart-border edges (edges no other face of the UV mesh
shares). Those texels get the nearest point of the triangle, so the bake gives them the surface's own colour and
bilinear filtering right at a chart border reads it on both sides of a seam instead of gutter fill. When several
faces claim a texel, the one it is least outside of wins (inside beats margin); a texel farther than `margin`
from the triangle (beyond a sharp corner) stays unclaimed.

No loop over triangles: every triangle is cut into texel rows, each row's column span is solved from the three
edge inequalities, and the spans are expanded into texels, all at once (in chunks of rows, to bound memory).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MARGIN = 1.5  # texels: covers every texel that bilinear filtering reads at a point on a chart border
_EDGE_EPS = 1e-3  # texels: interior edges claim centres this close outside, so shared edges leave no gap
_CHUNK = 1 << 22  # texels per chunk
_KEY_SCALE = 1024  # priority key resolution: 1/1024 texel


@dataclass
class TexelCoverage:
    """Texels claimed by faces: flat texel index (row * size + col), face, clamped barycentrics, inside flag."""

    size: int
    texel: torch.Tensor  # (T,) int64, ascending
    face: torch.Tensor  # (T,) int64
    bary: torch.Tensor  # (T, 3) float32, >= 0, summing to 1: the point on the face nearest the texel centre
    inside: torch.Tensor  # (T,) bool: the texel centre lies inside its face (False: in the border margin)


def rasterize_uv(uvs: torch.Tensor, faces: torch.Tensor, size: int, margin: float = MARGIN) -> TexelCoverage:
    """Cover a size x size texture with the UV triangles `faces` (F, 3) over `uvs` (V, 2) (see module docstring)."""
    device = uvs.device
    faces = faces.long()
    nf = faces.shape[0]
    corners = uvs.to(torch.float32)[faces]  # (F, 3, 2) UV
    xy = torch.stack([corners[..., 0] * size, (1.0 - corners[..., 1]) * size], dim=-1)  # (F, 3, 2) image
    origin = xy[:, 0]  # (F, 2): planes are evaluated relative to vertex 0 (float32 stays exact near 4096)
    coef, edge_scale, ok = _barycentric_planes(xy - origin[:, None, :])  # (F, 3, 3), (F, 3), (F,)
    # Allowed distance outside each edge (edge i is opposite vertex i), in texels.
    slack = torch.where(_border_edges(faces), margin, _EDGE_EPS)  # (F, 3)

    # 1. Rows of each face (centres within the face's y-range grown by the largest slack).
    grow = slack.amax(dim=1)
    row_lo = torch.ceil(xy[..., 1].amin(dim=1) - grow - 0.5).clamp(0, size - 1).long()
    row_hi = torch.floor(xy[..., 1].amax(dim=1) + grow - 0.5).clamp(0, size - 1).long()
    n_rows = torch.where(ok, (row_hi - row_lo + 1).clamp(min=0), torch.zeros_like(row_lo))
    face_of_row = torch.repeat_interleave(torch.arange(nf, device=device), n_rows)  # (R,)
    row = row_lo[face_of_row] + _ragged_arange(n_rows)

    # 2. Column spans of each (face, row): distance_i(x) = A_i + B_i x' >= -slack_i for the three edges. The
    #    outer span allows the border margin; the inner span (all slacks _EDGE_EPS) holds the inside texels.
    f = face_of_row
    y_local = row.to(torch.float32) + 0.5 - origin[f, 1]
    a_coef = (coef[f, :, 0] + coef[f, :, 2] * y_local[:, None]) * edge_scale[f]  # (R, 3)
    b_coef = coef[f, :, 1] * edge_scale[f]
    col_lo, col_hi = _span(a_coef, b_coef, slack[f], origin[f, 0], size)
    in_lo, in_hi = _span(a_coef, b_coef, torch.full_like(a_coef, _EDGE_EPS), origin[f, 0], size)
    n_cols = (col_hi - col_lo + 1).clamp(min=0)

    # 3. Texels of every span; the face each texel is least outside of wins (key = priority * F + face).
    no_claim = torch.iinfo(torch.int64).max
    best = torch.full((size * size,), no_claim, dtype=torch.int64, device=device)
    ends = torch.cumsum(n_cols, 0)
    start = 0
    while start < n_cols.shape[0]:
        base = int(ends[start - 1]) if start else 0
        stop = min(max(int(torch.searchsorted(ends, base + _CHUNK, right=True)), start + 1), n_cols.shape[0])
        span = torch.repeat_interleave(torch.arange(start, stop, device=device), n_cols[start:stop])
        col = col_lo[span] + _ragged_arange(n_cols[start:stop])
        key = face_of_row[span]
        margin_texel = torch.nonzero((col < in_lo[span]) | (col > in_hi[span])).squeeze(1)
        if margin_texel.numel():
            ms = span[margin_texel]
            x_local = col[margin_texel].to(torch.float32) + 0.5 - origin[face_of_row[ms], 0]
            distance = a_coef[ms] + b_coef[ms] * x_local[:, None]  # (M, 3), positive inside
            outside = (-distance).amax(dim=1).clamp(min=0.0)
            key[margin_texel] += torch.round(outside * _KEY_SCALE).long() * nf
        best.scatter_reduce_(0, row[span] * size + col, key, reduce="amin")
        start = stop

    texel = torch.nonzero(best != no_claim).squeeze(1)
    key = best[texel]
    face = key % nf
    inside = key < nf
    col, row = texel % size, texel // size
    x = col.to(torch.float32) + 0.5 - origin[:, 0][face]
    y = row.to(torch.float32) + 0.5 - origin[:, 1][face]
    coef_rows = coef.reshape(nf, 9).T.contiguous()  # (9, F): gathered one row at a time
    bary = torch.stack([coef_rows[3 * i][face] + coef_rows[3 * i + 1][face] * x + coef_rows[3 * i + 2][face] * y
                        for i in range(3)], dim=1)
    # Margin texels: the exact nearest point of the triangle (nearest edge point); beyond `margin` -> unclaimed.
    out = torch.nonzero(~inside).squeeze(1)
    if out.numel():
        corners = xy[face[out]] - origin[face[out]][:, None, :]  # (M, 3, 2)
        point = torch.stack([x[out], y[out]], dim=1)  # (M, 2)
        out_bary, distance = _nearest_on_edges(point, corners)
        bary[out] = out_bary
        keep = torch.ones_like(inside)
        keep[out] = distance <= margin + 1e-4
        texel, face, bary, inside = texel[keep], face[keep], bary[keep], inside[keep]
    bary = bary.clamp(min=0.0)
    bary = bary / bary.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return TexelCoverage(size=size, texel=texel, face=face, bary=bary, inside=inside)


def _nearest_on_edges(p: torch.Tensor, tri: torch.Tensor):
    """Nearest point to p (M, 2) on the border of triangles tri (M, 3, 2) -> (barycentrics (M, 3), distance (M,))."""
    best_d2 = torch.full((p.shape[0],), float("inf"), device=p.device)
    best = torch.zeros((p.shape[0], 3), device=p.device)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        edge = tri[:, j] - tri[:, i]
        t = (((p - tri[:, i]) * edge).sum(1) / (edge * edge).sum(1).clamp(min=1e-12)).clamp(0.0, 1.0)
        d2 = ((tri[:, i] + t[:, None] * edge - p) ** 2).sum(1)
        closer = d2 < best_d2
        b = torch.zeros_like(best)
        b[:, i], b[:, j] = 1.0 - t, t
        best = torch.where(closer[:, None], b, best)
        best_d2 = torch.where(closer, d2, best_d2)
    return best, best_d2.sqrt()


def _span(a_coef, b_coef, slack, origin_x, size):
    """Columns [lo, hi] whose centres satisfy A_i + B_i x' >= -slack_i for all three edges (x' = x - origin_x)."""
    bound = (-slack - a_coef) / torch.where(b_coef == 0, torch.ones_like(b_coef), b_coef)
    inf = torch.full_like(bound, float("inf"))
    x_lo = torch.where(b_coef > 0, bound, -inf).amax(dim=1)
    x_hi = torch.where(b_coef < 0, bound, inf).amin(dim=1)
    empty = ((b_coef == 0) & (a_coef < -slack)).any(dim=1)
    lo = torch.ceil(x_lo + origin_x - 0.5).clamp(min=0, max=size).long()
    hi = torch.floor(x_hi + origin_x - 0.5).clamp(min=-1, max=size - 1).long()
    return lo, torch.where(empty, lo - 1, hi)


def _border_edges(faces: torch.Tensor) -> torch.Tensor:
    """(F, 3) bool: is the edge opposite corner i used by this face only (a chart border in the UV mesh)?"""
    nv = int(faces.max()) + 1
    ends = faces[:, [1, 2, 0]], faces[:, [2, 0, 1]]  # edge opposite corner i joins corners i+1 and i+2
    key = torch.minimum(*ends) * nv + torch.maximum(*ends)  # (F, 3)
    _, inverse, counts = torch.unique(key.reshape(-1), return_inverse=True, return_counts=True)
    return (counts[inverse] == 1).reshape(-1, 3)


def _barycentric_planes(xy: torch.Tensor):
    """Per triangle (vertices `xy` (F, 3, 2), vertex 0 at the origin): b_i = coef[i,0] + coef[i,1] x + coef[i,2] y,
    the distance scale of each edge, and validity (non-zero area).

    b_i is the barycentric coordinate of vertex i; b_i * edge_scale[i] is the signed distance (in texels,
    positive inside) to the edge opposite vertex i, whatever the triangle's orientation.
    """
    a, b, c = xy[:, 0], xy[:, 1], xy[:, 2]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])  # (F,)
    ok = area2.abs() > 1e-9
    inv = torch.where(ok, 1.0 / torch.where(ok, area2, torch.ones_like(area2)), torch.zeros_like(area2))
    rows = []
    for p, q in ((b, c), (c, a), (a, b)):  # vertex i's barycentric: signed area of (P, p, q) over the total
        # cross(p - P, q - P) = cross(p, q) + P.x (p.y - q.y) + P.y (q.x - p.x)
        const = p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]
        rows.append(torch.stack([const, p[:, 1] - q[:, 1], q[:, 0] - p[:, 0]], dim=1) * inv[:, None])
    coef = torch.stack(rows, dim=1)  # (F, 3, 3)
    edge_len = torch.stack([(c - b).norm(dim=1), (a - c).norm(dim=1), (b - a).norm(dim=1)], dim=1)  # (F, 3)
    edge_scale = area2.abs()[:, None] / edge_len.clamp(min=1e-12)
    return coef, edge_scale, ok


def _ragged_arange(counts: torch.Tensor) -> torch.Tensor:
    """concat(arange(c) for c in counts), without a loop."""
    total = int(counts.sum())
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(total, device=counts.device) - torch.repeat_interleave(first, counts)
