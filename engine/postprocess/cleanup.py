"""Mesh clean-up before decimation: what a raw decoder mesh needs to become one tidy, closed, outward surface.

`clean_mesh` runs these passes in order (each pass is also public; all are vectorised over faces, vertices and
edges, with no Python loop over any of them):

1. `drop_nonfinite` — faces touching a NaN/inf vertex go.
2. `weld_vertices` — vertices closer than a tolerance become one; faces with a repeated vertex go.
3. `part_stats` + `drop_floaters` — vertex-connected parts whose area is small against the largest part go.
   Then `drop_inner_walls`: closed parts buried inside another part and wound inward go (`enclosed.py`): the
   second, inward surface that interior pruning leaves inside every decoder mesh. This runs on the decoder's own
   winding, which FlexiCubes sets face by face from the sdf, before step 4 may re-root it.
4. Only for parts that are not closed and consistently wound (`edge_defects`; a decoder mesh usually has none):
   `drop_degenerate_faces` (duplicate vertex triples), `orient_faces` (consistent winding across every
   manifold edge) and `fill_small_holes` (a boundary loop with few edges and a short perimeter gets a fan of
   triangles around a new centre vertex).
5. `turn_parts_outward` — a part with a clearly negative signed volume is flipped as a whole.
6. `drop_unused_vertices`.

Half-edges: face f has corners k = 0, 1, 2 and half-edges F[f,k] -> F[f,(k+1)%3]. The directed edge matrix
D (V x V, sparse) counts half-edges a -> b; a closed, manifold, consistently wound surface has D == D^T with
all entries 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components

from ..assets import Mesh
from ..errors import InputError
from .enclosed import find_inner_walls


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
    """Per vertex-connected part: labels (V,) and, per part, area and signed volume about the part's centroid."""

    labels: np.ndarray  # (V,) part of each vertex
    count: int
    area: np.ndarray  # (P,)
    volume: np.ndarray  # (P,) positive when the faces wind counter-clockwise seen from outside


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


def clean_mesh(mesh: Mesh, options: CleanupOptions = CleanupOptions()) -> tuple[Mesh, CleanupReport]:
    """All clean-up passes (see the module docstring). Returns a new mesh (float32/int32) and what changed.

    Raises InputError for an empty mesh, bad indices, or when nothing usable is left (all faces non-finite or
    degenerate).
    """
    check_mesh(mesh)
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces.astype(np.int64)
    c = None if mesh.vertex_colors is None else mesh.vertex_colors.astype(np.float32)
    n_faces_in = f.shape[0]

    # 1-2. non-finite, weld, repeated vertices
    f = drop_nonfinite(v, f)
    if f.shape[0] == 0:
        raise InputError("every face of the mesh touches a NaN or infinite vertex", "check the decoder output")
    v, f, c = drop_unused_vertices(v, f, c)
    diag = bbox_diagonal(v)
    n_vertices = v.shape[0]
    v, f, c = weld_vertices(v, f, c, tolerance=options.weld_tolerance * diag)
    welded = n_vertices - v.shape[0]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    if f.shape[0] == 0:
        raise InputError("every face of the mesh is degenerate (a repeated vertex)", "check the decoder output")
    n_clean_faces = f.shape[0]

    # 3. floaters
    d = directed_edge_matrix(v.shape[0], f)
    stats = part_stats(v, f, d)
    f, keep_part = drop_floaters(f, stats, options.min_part_ratio)
    dropped_parts = stats.count - int(keep_part.sum())
    dropped_walls = 0
    if options.drop_inner_walls:
        f, dropped_walls = drop_inner_walls(v, f, stats)
    present = np.zeros(stats.count, bool)
    present[stats.labels[f[:, 0]]] = True

    # 4. repairs, only where a kept part has an edge defect
    flipped, filled = 0, 0
    defect_parts = np.unique(stats.labels[edge_defects(d)])
    if present[defect_parts].any():
        n_before = f.shape[0]
        f = drop_degenerate_faces(f)
        n_clean_faces -= n_before - f.shape[0]
        f, flipped = orient_faces(v.shape[0], f)
        v, f, c, filled = fill_small_holes(v, f, c, options.max_hole_edges, options.max_hole_perimeter * diag)
        stats = part_stats(v, f)  # windings and vertices changed

    # 5-6. outward, unused vertices
    f, turned = turn_parts_outward(f, stats)
    v, f, c = drop_unused_vertices(v, f, c)
    out = Mesh(vertices=v.astype(np.float32), faces=f.astype(np.int32), vertex_colors=c)
    report = CleanupReport(welded, n_faces_in - n_clean_faces, dropped_parts, dropped_walls, flipped + turned, filled)
    return out, report


# ----------------------------------------------------------------------------------------------------- passes

def drop_nonfinite(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces whose three vertices are all finite."""
    bad_vertex = ~np.isfinite(vertices).all(axis=1)
    if not bad_vertex.any():
        return faces
    return faces[~bad_vertex[faces].any(axis=1)]


def weld_vertices(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None, tolerance: float):
    """Merge vertices that round to the same `tolerance`-sized grid cell (the first one of each cell stays)."""
    if vertices.shape[0] == 0:
        return vertices, faces, colors
    q = np.floor((vertices - vertices.min(axis=0)) / max(tolerance, 1e-30) + 0.5).astype(np.int64)
    # 21 bits per axis: with the default tolerance (1e-6 of the diagonal) the cells per axis stay below 2^20.
    q = np.minimum(q, (1 << 21) - 1)
    key = (q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if first.shape[0] == vertices.shape[0]:
        return vertices, faces, colors
    return vertices[first], inverse[faces], None if colors is None else colors[first]


def drop_degenerate_faces(faces: np.ndarray) -> np.ndarray:
    """Drop faces with a repeated vertex and all but the first face of each vertex triple (either winding)."""
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    faces = faces[ok]
    first = _unique_rows_first(np.sort(faces, axis=1))
    return faces[np.sort(first)]


def drop_floaters(faces: np.ndarray, stats: PartStats, min_part_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the faces of parts whose area is at least `min_part_ratio` of the largest part's. -> (faces, keep (P,))"""
    keep_part = stats.area >= min_part_ratio * stats.area.max()
    if keep_part.all():
        return faces, keep_part
    return faces[keep_part[stats.labels[faces[:, 0]]]], keep_part


def drop_inner_walls(vertices: np.ndarray, faces: np.ndarray, stats: PartStats) -> tuple[np.ndarray, int]:
    """Drop the faces of parts that `enclosed.find_inner_walls` calls inner walls. -> (faces, parts dropped)

    `stats` may describe more faces than `faces` holds (parts already dropped simply have none left).
    """
    face_part = stats.labels[faces[:, 0]]
    wall = find_inner_walls(vertices, faces, face_part, stats.volume, stats.area)
    if not wall.any():
        return faces, 0
    return faces[~wall[face_part]], int(wall.sum())


def edge_defects(d: csr_matrix) -> np.ndarray:
    """Vertices on a boundary edge, a same-direction edge pair, a duplicate face or a non-manifold edge.

    `d` is `directed_edge_matrix`. A closed, manifold, consistently wound part touches none of these vertices.
    """
    asym = (d - d.T).tocoo()
    nonzero = asym.data != 0
    multi = d.tocoo()
    return np.unique(np.concatenate([asym.row[nonzero], multi.row[multi.data > 1]]))


def orient_faces(n_vertices: int, faces: np.ndarray) -> tuple[np.ndarray, int]:
    """Make the winding agree across every manifold edge. Returns (faces, number flipped).

    Two faces sharing a manifold edge agree when they traverse it in opposite directions. Disagreements are
    resolved over a breadth-first spanning forest of the face graph: each face's flip is the XOR of the
    disagreements on its path to the root (pointer jumping: log2(depth) vectorised steps). A non-orientable part
    (a Moebius strip) keeps the disagreements that no flip can remove. Which side is "out" is decided
    afterwards by `turn_parts_outward`.
    """
    nf = faces.shape[0]
    a, b, face_of = _half_edges(faces)
    pair_f, pair_g, same_direction = _manifold_edge_pairs(a, b, face_of, n_vertices)
    if not same_direction.any():
        return faces, 0
    graph = coo_matrix((np.ones(pair_f.shape[0], np.int8), (pair_f, pair_g)), shape=(nf, nf)).tocsr()
    n_parts, labels = connected_components(graph, directed=False)
    # One breadth-first tree per edge-connected part that has a disagreement (usually a handful of parts).
    first_face = np.full(n_parts, nf, np.int64)
    np.minimum.at(first_face, labels, np.arange(nf))
    parent = np.arange(nf)
    for root in first_face[np.unique(labels[pair_f[same_direction]])]:
        _, p = breadth_first_order(graph, int(root), directed=False, return_predecessors=True)
        reached = p >= 0
        parent[reached] = p[reached]
    # parity[f]: does f disagree with its parent? Look the (f, parent) pair up among the manifold pairs.
    nf64 = np.int64(nf)
    pair_key = np.minimum(pair_f, pair_g) * nf64 + np.maximum(pair_f, pair_g)
    order = np.argsort(pair_key)
    child = np.flatnonzero(parent != np.arange(nf))
    tree_key = np.minimum(child, parent[child]) * nf64 + np.maximum(child, parent[child])
    at = order[np.searchsorted(pair_key, tree_key, sorter=order)]
    parity = np.zeros(nf, bool)
    parity[child] = same_direction[at]
    up = parent
    while not (up[up] == up).all():  # pointer jumping: parity becomes the XOR along the path to the root
        parity = parity ^ parity[up]
        up = up[up]
    return np.where(parity[:, None], faces[:, [0, 2, 1]], faces), int(parity.sum())


def fill_small_holes(vertices, faces, colors, max_edges: int, max_perimeter: float):
    """Close boundary loops with <= max_edges edges and perimeter <= max_perimeter by a fan around their centre.

    A boundary half-edge (a -> b) is one whose edge no other face uses; the loop it belongs to is its connected
    component in the graph of boundary edges (two holes that touch at a vertex count as one). Each filled loop
    gets a new vertex at the mean of its boundary half-edges' start vertices (and their mean colour) and one
    triangle (b, a, centre) per boundary half-edge, which continues the neighbouring face's winding.
    Returns (vertices, faces, colors, number of holes filled).
    """
    a, b, _ = _half_edges(faces)
    nv = vertices.shape[0]
    key = np.minimum(a, b) * nv + np.maximum(a, b)
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    boundary = counts[inverse] == 1
    if not boundary.any():
        return vertices, faces, colors, 0
    ba, bb = a[boundary], b[boundary]
    graph = coo_matrix((np.ones(ba.shape[0], np.int8), (ba, bb)), shape=(nv, nv))
    _, labels = connected_components(graph, directed=False)
    _, loop_of_edge = np.unique(labels[ba], return_inverse=True)
    n_loops = int(loop_of_edge.max()) + 1
    edge_count = np.bincount(loop_of_edge, minlength=n_loops)
    length = np.linalg.norm(vertices[ba] - vertices[bb], axis=1)
    perimeter = np.bincount(loop_of_edge, weights=length, minlength=n_loops)
    fill = (edge_count <= max_edges) & (perimeter <= max_perimeter) & (edge_count >= 3)
    n_fill = int(fill.sum())
    if n_fill == 0:
        return vertices, faces, colors, 0
    new_index = np.full(n_loops, -1, np.int64)
    new_index[fill] = nv + np.arange(n_fill)
    sel = fill[loop_of_edge]
    filled_loop = new_index[loop_of_edge[sel]] - nv  # 0..n_fill-1 per selected boundary half-edge
    count = edge_count[fill].astype(np.float64)[:, None]
    centre = _scatter_mean(vertices[ba[sel]], filled_loop, n_fill, count)
    new_faces = np.stack([bb[sel], ba[sel], nv + filled_loop], axis=1)
    vertices = np.concatenate([vertices, centre])
    if colors is not None:
        centre_color = _scatter_mean(colors[ba[sel]].astype(np.float64), filled_loop, n_fill, count)
        colors = np.concatenate([colors, centre_color.astype(colors.dtype)])
    return vertices, np.concatenate([faces, new_faces]), colors, n_fill


def turn_parts_outward(faces: np.ndarray, stats: PartStats) -> tuple[np.ndarray, int]:
    """Flip every part whose signed volume is clearly negative. Returns (faces, number of faces flipped).

    "Clearly": below -1e-3 * area^1.5 (a sphere has +0.094 * area^1.5), so open sheets keep their winding.
    """
    inward = stats.volume < -1e-3 * stats.area ** 1.5
    if not inward.any():
        return faces, 0
    turn = inward[stats.labels[faces[:, 0]]]
    return np.where(turn[:, None], faces[:, [0, 2, 1]], faces), int(turn.sum())


def drop_unused_vertices(vertices, faces, colors=None):
    """Remove vertices no face uses; faces are re-indexed."""
    used = np.zeros(vertices.shape[0], bool)
    used[faces.ravel()] = True
    if used.all():
        return vertices, faces, colors
    remap = np.cumsum(used) - 1
    return vertices[used], remap[faces], None if colors is None else colors[used]


# ------------------------------------------------------------------------------------------------- structures

def directed_edge_matrix(n_vertices: int, faces: np.ndarray) -> csr_matrix:
    """D[a, b] = number of half-edges a -> b (CSR; built by a linear-time counting sort, duplicates summed)."""
    a, b, _ = _half_edges(faces)
    return csr_matrix((np.ones(a.shape[0], np.int32), (a, b)), shape=(n_vertices, n_vertices))


def part_stats(vertices: np.ndarray, faces: np.ndarray, d: csr_matrix | None = None) -> PartStats:
    """Vertex-connected parts with their areas and signed volumes (one pass over the faces)."""
    nv = vertices.shape[0]
    if d is None:
        d = directed_edge_matrix(nv, faces)
    n, labels = connected_components(d, directed=False)
    part = labels[faces[:, 0]]
    vertex_count = np.bincount(labels, minlength=n).astype(np.float64)[:, None]
    centroid = _scatter_mean(vertices, labels, n, vertex_count).astype(np.float32)
    v32 = vertices.astype(np.float32)
    p0 = v32[faces[:, 0]] - centroid[part]
    cross = _cross(v32[faces[:, 1]] - v32[faces[:, 0]], v32[faces[:, 2]] - v32[faces[:, 0]])
    volume = np.einsum("ij,ij->i", p0, cross)  # 6 x signed volume of (centroid, p0, p1, p2)
    area = np.sqrt(np.einsum("ij,ij->i", cross, cross))  # 2 x area
    return PartStats(labels=labels, count=n,
                     area=np.bincount(part, weights=area, minlength=n) / 2.0,
                     volume=np.bincount(part, weights=volume, minlength=n) / 6.0)


def bbox_diagonal(vertices: np.ndarray) -> float:
    return float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0))) if vertices.shape[0] else 0.0


# ---------------------------------------------------------------------------------------------------- helpers

def _half_edges(faces: np.ndarray):
    """Half-edge starts, ends and owning faces, corner-major within each face: (3F,) each."""
    a = faces.ravel()
    b = faces[:, [1, 2, 0]].ravel()
    face_of = np.repeat(np.arange(faces.shape[0]), 3)
    return a, b, face_of


def _manifold_edge_pairs(a, b, face_of, nv):
    """For each edge used by exactly two half-edges: the two faces and whether they run the same direction."""
    key = np.minimum(a, b) * np.int64(nv) + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    counts = np.diff(np.r_[starts, k.shape[0]])
    two = starts[counts == 2]
    h0, h1 = order[two], order[two + 1]
    return face_of[h0], face_of[h1], a[h0] == a[h1]


def _cross(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise cross product of (N, 3) arrays (np.cross is several times slower on large inputs)."""
    out = np.empty_like(u)
    out[:, 0] = u[:, 1] * w[:, 2] - u[:, 2] * w[:, 1]
    out[:, 1] = u[:, 2] * w[:, 0] - u[:, 0] * w[:, 2]
    out[:, 2] = u[:, 0] * w[:, 1] - u[:, 1] * w[:, 0]
    return out


def _scatter_mean(values: np.ndarray, index: np.ndarray, n: int, count: np.ndarray) -> np.ndarray:
    out = np.stack([np.bincount(index, weights=values[:, k], minlength=n) for k in range(values.shape[1])], 1)
    return out / np.maximum(count, 1.0)


def _unique_rows_first(rows: np.ndarray) -> np.ndarray:
    """Index of the first occurrence of each distinct row of an (N, 3) int array."""
    if rows.shape[0] == 0:
        return np.zeros(0, np.int64)
    m = int(rows.max()) + 1
    if m >= 2_000_000:  # three indices no longer fit one int64 key
        return np.unique(rows, axis=0, return_index=True)[1]
    key = (rows[:, 0].astype(np.int64) * m + rows[:, 1]) * m + rows[:, 2]
    return np.unique(key, return_index=True)[1]
