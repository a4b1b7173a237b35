"""Mesh clean-up before decimation: what a raw decoder mesh needs to become one tidy, closed, outward surface.

`clean_mesh` runs these passes in order, in torch on the device it is given (CUDA when the postprocess has one;
each pass is also public and takes tensors; all are vectorised over faces, vertices and edges, with no Python
loop over any of them):

1. Faces touching a NaN/inf vertex go (`drop_nonfinite` does the same on numpy arrays).
2. `weld_vertices` — vertices closer than a tolerance become one; faces with a repeated vertex go.
3. `part_stats` + `drop_floaters` — vertex-connected parts whose area is small against the largest part go.
   Then `drop_inner_walls`: closed parts buried inside another part and wound inward go (`enclosed.py`): the
   second, inward surface that interior pruning leaves inside a decoder mesh extracted the official way (the
   pipeline's sealed extraction makes none). This runs on the decoder's own winding, which FlexiCubes sets face
   by face from the sdf, before step 4 may re-root it.
4. Only when a kept part is not closed and consistently wound (`HalfEdges.all_paired`; a decoder mesh usually
   is): `drop_degenerate_faces` (duplicate vertex triples), `orient_faces` (consistent winding across every
   manifold edge) and `fill_small_holes` (a boundary loop with few edges and a short perimeter gets a fan of
   triangles around a new centre vertex).
5. `turn_parts_outward` — a part with a clearly negative signed volume is flipped as a whole.
6. Unused vertices go (`drop_unused_vertices` does the same on numpy arrays).

Half-edges: face f has corners k = 0, 1, 2 and half-edges h = 3 f + k, F[f,k] -> F[f,(k+1)%3]. `HalfEdges`
sorts them once by (undirected edge, direction); a closed, manifold, consistently wound surface has exactly one
half-edge each way on every edge. Connected components (`component_roots`) use scipy's linear-time search on
the CPU and a parallel union-find (hooking onto the smaller root, then pointer jumping) on other devices; both
give each node the smallest node of its component, so every later step is the same on both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..assets import Mesh
from ..errors import InputError
from .components import component_roots
from .enclosed import find_inner_walls
from .half_edges import HalfEdges

@dataclass(frozen=True)
class CleanupOptions:
    weld_tolerance: float = 1e-6  # fraction of the bounding-box diagonal under which vertices are merged
    min_part_ratio: float = 0.01  # a part with less area than this fraction of the largest part is a floater
    max_hole_edges: int = 100  # holes with more boundary edges than this stay open
    max_hole_perimeter: float = 0.1  # ... and so do holes longer than this fraction of the bounding-box diagonal
    drop_inner_walls: bool = True  # drop closed inward-wound parts buried in another part (the pruning's inner wall)


@dataclass(frozen=True)
class CleanupReport:
    """What clean-up changed (for logs and tests)."""

    welded_vertices: int
    dropped_faces: int  # touching a non-finite vertex, with a repeated vertex, or duplicates
    dropped_parts: int  # floaters
    dropped_walls: int  # inner walls: inward-wound parts buried in another part
    flipped_faces: int
    filled_holes: int


@dataclass
class PartStats:
    """Per vertex-connected part: labels (V,) and, per part, area and signed volume about the part's centroid.

    Parts are numbered in the order of their smallest vertex index.
    """

    labels: torch.Tensor  # (V,) int64 part of each vertex
    count: int
    area: torch.Tensor  # (P,) float64
    volume: torch.Tensor  # (P,) float64, positive when the faces wind counter-clockwise seen from outside

    def face_part(self, faces: torch.Tensor) -> torch.Tensor:
        """(F,) the part of each face (faces of the vertices these stats describe)."""
        return _gather(self.labels, faces[:, 0])


def check_mesh(mesh: Mesh, what: str = "mesh") -> None:
    """Raise InputError unless `mesh` has the documented array shapes, dtypes and index range."""
    v, f = mesh.vertices, mesh.faces
    if f.shape[0] == 0 or v.shape[0] == 0:
        raise InputError(f"the {what} is empty ({v.shape[0]} vertices, {f.shape[0]} faces)",
                         "nothing to postprocess: check the decoder output or the mask")
    if not np.issubdtype(f.dtype, np.integer):
        raise InputError(f"the {what}'s faces are {f.dtype}, not integers", "pass faces as an (F, 3) int32 array")
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise InputError(f"the {what}'s faces index vertices outside 0..{v.shape[0] - 1} "
                         f"(found {int(f.min())}..{int(f.max())})", "faces must index the vertex array")
    if mesh.vertex_colors is not None and mesh.vertex_colors.shape != (v.shape[0], 3):
        raise InputError(f"the {what}'s vertex_colors are {mesh.vertex_colors.shape}, expected ({v.shape[0]}, 3)",
                         "pass one RGB colour per vertex or None")


def clean_mesh(mesh: Mesh, options: CleanupOptions = CleanupOptions(), device: torch.device | str | None = None,
               on_step: Callable[[str], None] | None = None) -> tuple[Mesh, CleanupReport]:
    """All clean-up passes (see the module docstring). Returns a new mesh (float32/int32) and what changed.

    device: where the passes run (default CPU); the result is the same on every device. on_step: called with
    each step's name as it ends ("weld", "parts", "floaters", "inner walls", "edges", "repair", "outward"), for
    profiling (the caller synchronises the device if it wants wall-clock times).

    Raises InputError for an empty mesh, bad indices, or when nothing usable is left (all faces non-finite or
    degenerate).
    """
    check_mesh(mesh)
    step = on_step or (lambda name: None)
    device = torch.device(device or "cpu")
    v = _tensor(mesh.vertices, torch.float64, device)  # (V, 3)
    f = _tensor(mesh.faces, torch.int64, device)  # (F, 3)
    c = None if mesh.vertex_colors is None else _tensor(mesh.vertex_colors, torch.float32, device)
    n_faces_in = f.shape[0]

    # 1-2. non-finite, weld, repeated vertices
    if not bool(torch.isfinite(v.sum())):  # (a sum is finite when every term is, bar overflow: one pass)
        f = _rows(f, _gather(torch.isfinite(v).all(dim=1), f).all(dim=1))
    if f.shape[0] == 0:
        raise InputError("every face of the mesh touches a NaN or infinite vertex", "check the decoder output")
    v, f, c = _drop_unused_vertices(v, f, c)
    lo_hi = torch.stack([v.amin(0), v.amax(0)]).cpu().numpy()  # exact, so the diagonal is the same everywhere
    diag = float(np.linalg.norm(lo_hi[1] - lo_hi[0]))
    n_vertices = v.shape[0]
    v, f, c = weld_vertices(v, f, c, tolerance=options.weld_tolerance * diag)
    welded = n_vertices - v.shape[0]
    f = _rows(f, _three_vertices(f))
    if f.shape[0] == 0:
        raise InputError("every face of the mesh is degenerate (a repeated vertex)", "check the decoder output")
    n_clean_faces = f.shape[0]
    step("weld")

    # 3. floaters and inner walls (whole parts; the parts of the faces left stay as they are)
    stats = part_stats(v, f)
    step("parts")
    f, keep_part = drop_floaters(f, stats, options.min_part_ratio)
    dropped_parts = stats.count - int(keep_part.sum())
    step("floaters")
    dropped_walls = 0
    if options.drop_inner_walls:
        f, dropped_walls = drop_inner_walls(v, f, stats)
    step("inner walls")

    # 4. repairs, only where a kept part has an edge defect
    edges = HalfEdges(f, v.shape[0])
    closed = edges.all_paired()
    step("edges")
    flipped, filled = 0, 0
    if not closed:
        n_before = f.shape[0]
        f = drop_degenerate_faces(f)
        if f.shape[0] != n_before:
            n_clean_faces -= n_before - f.shape[0]
            edges = HalfEdges(f, v.shape[0])
        boundary = edges.boundary()
        n_before = f.shape[0]
        f, flip = orient_faces(f, v.shape[0], edges)
        flipped = int(flip.sum())
        boundary = _follow_flips(boundary, flip)
        v, f, c, filled = fill_small_holes(v, f, c, options.max_hole_edges, options.max_hole_perimeter * diag,
                                           boundary)
        # Filling joins no parts: each centre vertex (corner 2 of its fan) takes its loop's part.
        labels = torch.cat([stats.labels, stats.labels.new_empty(v.shape[0] - stats.labels.shape[0])])
        labels[f[n_before:, 2]] = stats.labels[f[n_before:, 1]]
        stats = part_stats(v, f, labels, stats.count)  # windings and vertices changed
        step("repair")

    # 5-6. outward, unused vertices
    f, turned = turn_parts_outward(f, stats)
    v, f, c = _drop_unused_vertices(v, f, c)
    out = Mesh(vertices=v.float().cpu().numpy(), faces=f.int().cpu().numpy(),
               vertex_colors=None if c is None else c.cpu().numpy())
    step("outward")
    report = CleanupReport(welded, n_faces_in - n_clean_faces, dropped_parts, dropped_walls, flipped + turned, filled)
    return out, report


# ----------------------------------------------------------------------------------------------------- passes

def drop_nonfinite(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces whose three vertices are all finite (numpy arrays; `decimate` and `artist` use it)."""
    bad_vertex = ~np.isfinite(vertices).all(axis=1)
    if not bad_vertex.any():
        return faces
    return faces[~bad_vertex[faces].any(axis=1)]


def weld_vertices(vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor | None, tolerance: float):
    """Merge vertices that round to the same `tolerance`-sized grid cell (the first one of each cell stays).

    Welded vertices come in the order of their cells' keys. Returns (vertices, faces, colors).
    """
    if vertices.shape[0] == 0:
        return vertices, faces, colors
    q = (vertices - vertices.amin(0)).div_(max(tolerance, 1e-30)).add_(0.5).floor_().long()  # (V, 3), in place
    # 21 bits per axis: with the default tolerance (1e-6 of the diagonal) the cells per axis stay below 2^20.
    q = q.clamp_(max=(1 << 21) - 1)
    key = (q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2]  # (V,)
    cells, inverse = torch.unique(key, sorted=True, return_inverse=True)
    if cells.shape[0] == vertices.shape[0]:
        return vertices, faces, colors
    first = torch.full_like(cells, vertices.shape[0]).scatter_reduce_(
        0, inverse, torch.arange(vertices.shape[0], device=key.device), "amin")  # (C,) first vertex of each cell
    return _gather(vertices, first), _gather(inverse, faces), None if colors is None else _gather(colors, first)


def drop_degenerate_faces(faces: torch.Tensor) -> torch.Tensor:
    """Drop faces with a repeated vertex and all but the first face of each vertex triple (either winding)."""
    faces = _rows(faces, _three_vertices(faces))
    s = faces.sort(dim=1).values  # (F, 3)
    # Rows in lexicographic order, ties in face order: stable sorts by the last key, then by the first two.
    m = int(s.max()) + 1 if s.shape[0] else 1
    order = torch.sort(s[:, 2], stable=True).indices
    order = order[torch.sort((s[order, 0] * m + s[order, 1]), stable=True).indices]
    rows = _gather(s, order)
    first = torch.ones(rows.shape[0], dtype=torch.bool, device=faces.device)
    first[1:] = (rows[1:] != rows[:-1]).any(dim=1)
    keep = torch.zeros_like(first)
    keep[order[first]] = True
    return _rows(faces, keep)


def drop_floaters(faces: torch.Tensor, stats: PartStats, min_part_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the faces of parts whose area is at least `min_part_ratio` of the largest part's. -> (faces, keep (P,))"""
    keep_part = stats.area >= min_part_ratio * stats.area.max()
    if bool(keep_part.all()):
        return faces, keep_part
    return _rows(faces, _gather(keep_part, stats.face_part(faces))), keep_part


def drop_inner_walls(vertices: torch.Tensor, faces: torch.Tensor, stats: PartStats) -> tuple[torch.Tensor, int]:
    """Drop the faces of parts that `enclosed.find_inner_walls` calls inner walls. -> (faces, parts dropped)

    `stats` may describe more faces than `faces` holds (parts already dropped simply have none left).
    """
    face_part = stats.face_part(faces)
    wall = find_inner_walls(vertices, faces, face_part, stats.volume, stats.area)
    n_walls = int(wall.sum())
    if n_walls == 0:
        return faces, 0
    return _rows(faces, ~_gather(wall, face_part)), n_walls


def orient_faces(faces: torch.Tensor, n_vertices: int, edges: HalfEdges | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the winding agree across every manifold edge. Returns (faces, flipped (F,) bool).

    Two faces sharing a manifold edge agree when they traverse it in opposite directions. Each face f gets two
    nodes, 2f (as it is) and 2f + 1 (flipped); an agreeing pair links (f, g) and (f', g'), a disagreeing one
    (f, g') and (f', g). In an orientable part the nodes then fall into two components, one per consistent
    winding; the one with the part's first face as it is keeps its winding, the other is flipped (so a part with
    no disagreement is left alone). A non-orientable part (a Moebius strip) has one component and is left as it
    is. Which side is "out" is decided afterwards by `turn_parts_outward`. `edges` must describe `faces`.
    """
    nf = faces.shape[0]
    edges = edges if edges is not None else HalfEdges(faces, n_vertices)
    f, g, same = edges.manifold_pairs()
    if not bool(same.any()):
        return faces, torch.zeros(nf, dtype=torch.bool, device=faces.device)
    s = same.long()
    root = component_roots(2 * nf, torch.cat([2 * f, 2 * f + 1]), torch.cat([2 * g + s, 2 * g + 1 - s]))
    flip = (root[0::2] & 1).bool()  # f as it is sits with the first face of its part flipped
    return torch.where(flip[:, None], faces[:, [0, 2, 1]], faces), flip


def fill_small_holes(vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor | None, max_edges: int,
                     max_perimeter: float, boundary: torch.Tensor | None = None):
    """Close boundary loops with <= max_edges edges and perimeter <= max_perimeter by a fan around their centre.

    A boundary half-edge (a -> b) is one whose edge no other face uses (`boundary`, (3F,) bool, computed when
    not given); the loop it belongs to is its connected component in the graph of boundary edges (two holes that
    touch at a vertex count as one). Each filled loop gets a new vertex at the mean of its boundary half-edges'
    start vertices (and their mean colour) and one triangle (b, a, centre) per boundary half-edge, which continues
    the neighbouring face's winding; the new vertices and faces are appended, loops in the order of their smallest
    vertex. Returns (vertices, faces, colors, number of holes filled).
    """
    nv = vertices.shape[0]
    if boundary is None:
        boundary = HalfEdges(faces, nv).boundary()
    if not bool(boundary.any()):
        return vertices, faces, colors, 0
    ba, bb = _rows(faces.reshape(-1), boundary), _rows(faces[:, [1, 2, 0]].reshape(-1), boundary)  # (B,) each
    _, loop_of_edge = torch.unique(_gather(component_roots(nv, ba, bb), ba), return_inverse=True)
    n_loops = int(loop_of_edge.max()) + 1
    edge_count = torch.bincount(loop_of_edge, minlength=n_loops)
    length = (vertices[ba] - vertices[bb]).norm(dim=1)
    perimeter = torch.zeros(n_loops, dtype=length.dtype, device=length.device).index_add_(0, loop_of_edge, length)
    fill = (edge_count <= max_edges) & (perimeter <= max_perimeter) & (edge_count >= 3)
    n_fill = int(fill.sum())
    if n_fill == 0:
        return vertices, faces, colors, 0
    new_index = torch.cumsum(fill, 0) - 1  # (n_loops,) 0..n_fill-1 for the loops filled
    sel = fill[loop_of_edge]
    filled_loop = new_index[loop_of_edge[sel]]  # per selected boundary half-edge
    count = edge_count[fill].to(torch.float64)[:, None]
    centre = _scatter_mean(vertices[ba[sel]].to(torch.float64), filled_loop, n_fill, count)
    new_faces = torch.stack([bb[sel], ba[sel], nv + filled_loop], dim=1)
    vertices = torch.cat([vertices, centre.to(vertices.dtype)])
    if colors is not None:
        centre_color = _scatter_mean(colors[ba[sel]].to(torch.float64), filled_loop, n_fill, count)
        colors = torch.cat([colors, centre_color.to(colors.dtype)])
    return vertices, torch.cat([faces, new_faces]), colors, n_fill


def turn_parts_outward(faces: torch.Tensor, stats: PartStats) -> tuple[torch.Tensor, int]:
    """Flip every part whose signed volume is clearly negative. Returns (faces, number of faces flipped).

    "Clearly": below -1e-3 * area^1.5 (a sphere has +0.094 * area^1.5), so open sheets keep their winding.
    """
    inward = stats.volume < -1e-3 * stats.area ** 1.5
    if not bool(inward.any()):
        return faces, 0
    turn = _gather(inward, stats.face_part(faces))
    return torch.where(turn[:, None], faces[:, [0, 2, 1]], faces), int(turn.sum())


def drop_unused_vertices(vertices, faces, colors=None):
    """Remove vertices no face uses; faces are re-indexed (numpy arrays; `decimate` and `artist` use it)."""
    used = np.zeros(vertices.shape[0], bool)
    used[faces.ravel()] = True
    if used.all():
        return vertices, faces, colors
    remap = np.cumsum(used) - 1
    return vertices[used], remap[faces], None if colors is None else colors[used]


# ------------------------------------------------------------------------------------------------- structures

def part_stats(vertices: torch.Tensor, faces: torch.Tensor, labels: torch.Tensor | None = None,
               count: int | None = None) -> PartStats:
    """Vertex-connected parts with their areas and signed volumes (one pass over the faces).

    With `labels` (V,) and `count` the parts are taken as given (clean-up's repairs keep them).
    """
    nv = vertices.shape[0]
    if labels is None:
        roots = component_roots(nv, torch.cat([faces[:, 0], faces[:, 1]]), torch.cat([faces[:, 1], faces[:, 2]]))
        is_root = roots == torch.arange(nv, device=roots.device)
        rank = torch.cumsum(is_root, 0) - 1
        labels, count = _gather(rank, roots), int(rank[-1]) + 1
    part = _gather(labels, faces[:, 0])  # (F,)
    vertex_count = torch.bincount(labels, minlength=count).to(torch.float64)[:, None]
    centroid = _scatter_mean(vertices.to(torch.float64), labels, count, vertex_count).float()  # (P, 3)
    v32 = vertices.float()
    p0, p1, p2 = (_gather(v32, faces[:, k]) for k in range(3))  # (F, 3) each
    cross = _cross(p1 - p0, p2 - p0)  # (F, 3)
    volume = ((p0 - _gather(centroid, part)) * cross).sum(1)  # 6 x signed volume of (centroid, p0, p1, p2)
    area = cross.norm(dim=1)  # 2 x area
    zeros = torch.zeros(count, dtype=torch.float64, device=vertices.device)
    return PartStats(labels=labels, count=count,
                     area=zeros.index_add(0, part, area.double()) / 2.0,
                     volume=zeros.index_add(0, part, volume.double()) / 6.0)


# ---------------------------------------------------------------------------------------------------- helpers

def _three_vertices(faces: torch.Tensor) -> torch.Tensor:
    """(F,) bool: faces whose three corners are distinct vertices."""
    return (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])


def _tensor(array: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A copy of `array` as a `dtype` tensor on `device`, converted there (fewer bytes cross to a GPU)."""
    if device.type == "cpu":
        return torch.tensor(array, dtype=dtype)
    return torch.tensor(array, device=device).to(dtype)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] along the first axis, for an index of any shape (index_select: on the CPU several times faster)."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


def _rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x[mask] along the first axis (through index_select, as `_gather`); x itself when the mask keeps all."""
    keep = torch.nonzero(mask).squeeze(1)
    return x if keep.shape[0] == x.shape[0] else x.index_select(0, keep)


def _cross(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Row-wise cross product of (N, 3) tensors (torch.linalg.cross is several times slower on the CPU)."""
    u0, u1, u2 = u.unbind(1)
    w0, w1, w2 = w.unbind(1)
    return torch.stack([u1 * w2 - u2 * w1, u2 * w0 - u0 * w2, u0 * w1 - u1 * w0], dim=1)


def _drop_unused_vertices(vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor | None):
    """`drop_unused_vertices` for tensors."""
    used = torch.zeros(vertices.shape[0], dtype=torch.bool, device=vertices.device)
    used.index_fill_(0, faces.reshape(-1), True)
    if bool(used.all()):
        return vertices, faces, colors
    remap = torch.cumsum(used, 0) - 1
    return _rows(vertices, used), _gather(remap, faces), None if colors is None else _rows(colors, used)


def _follow_flips(half_edge_mask: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """A (3F,) half-edge mask after the faces in `flip` were flipped: flipped half-edge k is former half-edge 2 - k."""
    rows = half_edge_mask.view(-1, 3)
    return torch.where(flip[:, None], rows[:, [2, 1, 0]], rows).reshape(-1)


def _scatter_mean(values: torch.Tensor, index: torch.Tensor, n: int, count: torch.Tensor) -> torch.Tensor:
    """(n, C) means of the rows of `values` (N, C) per index (N,); count (n, 1) rows per index."""
    total = torch.zeros(n, values.shape[1], dtype=values.dtype, device=values.device).index_add_(0, index, values)
    return total / count.clamp(min=1.0)
