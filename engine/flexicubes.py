"""FlexiCubes isosurface extraction (inference mode) on a sparse grid: only the cells near the surface are touched.

FlexiCubes (Shen et al. 2023, "Flexible Isosurface Extraction for Gradient-Based Mesh Optimization") is Dual
Marching Cubes with learned weights. Per surface cell, the marching-cubes patches become dual vertices; each dual
vertex sits at the beta-weighted mean of the alpha-weighted zero crossings on the cell edges of its patch. Each
grid edge with a sign change is shared by four cells; their four dual vertices make a quad, split into two
triangles along the diagonal whose gamma product is larger.

Grid and frames
* Lattice points (grid vertices) have integer coordinates in [0, R]^3, cells in [0, R)^3 (R = `resolution`);
  cell c has corners c + o, o in {0,1}^3. The caller gives the listed vertices with their positions (deformed,
  in any frame) and scalar values; a lattice point that is not listed is outside (`absent_sdf`), undeformed at
  `grid_origin + coords / R`, with attributes `absent_attrs`. This reproduces a dense grid filled with those
  defaults without ever allocating one: the candidate cells are the (at most 8) cells around every vertex with a
  negative value, so memory and time scale with the surface, not with R^3.
* Inside is value < 0.

Cell conventions (they are the official model's; the beta channels are indexed by edge number)
* Corner k of a cell sits at offset (k & 1, k >> 1 & 1, k >> 2 & 1) (x fastest). Case id = sum over inside
  corners of 2^k.
* Edges: 0-3 go round the face y = 0 through corners 0, 1, 5, 4; 4-7 round the face y = 1 through 2, 3, 7, 6
  (each written lower corner number first, i.e. along +x or +z); 8-11 are the y edges at corners 0, 1, 5, 4,
  written from the y = 1 end to the y = 0 end. Per-cell weights: beta (12, per edge), alpha (8, per corner),
  gamma (1).

Lookup tables (generated here from their definition; tests/engine/test_flexicubes.py checks their properties and
that they equal the published FlexiCubes tables)
* Patches of a case: the crossed edges, joined across every face. On a face with one or two adjacent inside
  corners the two crossed edges are joined; on an ambiguous face (two diagonal inside corners) each inside corner
  is cut off by its own segment. A patch = one connected set of crossed edges = one dual vertex (at most 4 per
  cell, at most 7 edges each).
* Patch order within a cell: by the smallest corner number touched by the patch on the minority side (inside
  when at most 4 corners are inside, else outside), ties by the smallest on the other side.
* Ambiguity (the paper's C16/C19 problem): a case is "problematic" when one patch holds both segments of an
  ambiguous face (36 cases, 5 or 6 inside corners). If the neighbour cell across that face is problematic as well,
  the cell uses the patches of the complement case (255 - id), which split that patch in two.

Dual vertices are numbered as the official implementation numbers them (cells with 1 patch first, then 2, 3, 4;
within that, cells in x-major order, then patch order); faces come out as the official ones too (quads of edges
whose first endpoint is outside first, then the others, each in sorted edge order), so results compare row by
row.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .errors import InputError

# ----------------------------------------------------------------------------------------------------------------
# Cell conventions and lookup tables (pure Python, built once)

CORNER_OFFSETS = tuple((k & 1, (k >> 1) & 1, (k >> 2) & 1) for k in range(8))  # corner k -> (dx, dy, dz)


def _cell_edges() -> tuple[tuple[int, int], ...]:
    loop = (0, 1, 5, 4)  # round the face y = 0
    face_y0 = [tuple(sorted((loop[i], loop[(i + 1) % 4]))) for i in range(4)]
    face_y1 = [(a + 2, b + 2) for a, b in face_y0]  # the same loop on the face y = 1 (corner + 2 sets the y bit)
    along_y = [(c + 2, c) for c in loop]  # from the y = 1 end to the y = 0 end
    return tuple(face_y0 + face_y1 + along_y)


CELL_EDGES = _cell_edges()  # (12, 2): (0,1) (1,5) (4,5) (0,4) (2,3) (3,7) (6,7) (2,6) (2,0) (3,1) (7,5) (6,4)


def _cell_faces() -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    """(axis, side, corners) for the 6 faces, in the order -x, +x, -y, +y, -z, +z."""
    return tuple(
        (axis, side, tuple(k for k in range(8) if CORNER_OFFSETS[k][axis] == side))
        for axis in range(3)
        for side in (0, 1)
    )


@dataclass(frozen=True)
class DualTables:
    """The per-case tables (case id = inside-corner bit mask, 0..255)."""

    patches: tuple[tuple[tuple[int, ...], ...], ...]  # [case] -> patches in order, each a sorted tuple of edge numbers
    ambiguous_neighbour: tuple[tuple[int, int, int] | None, ...]  # [case] -> offset of the cell to check, or None

    @property
    def num_dual_vertices(self) -> list[int]:
        return [len(p) for p in self.patches]

    def edge_to_patch(self) -> list[list[int]]:
        """[case][edge] -> index of the patch holding the edge, -1 for an edge without a sign change."""
        table = [[-1] * 12 for _ in range(256)]
        for case, patches in enumerate(self.patches):
            for slot, edges in enumerate(patches):
                for e in edges:
                    table[case][e] = slot
        return table


def _edge_number(a: int, b: int) -> int | None:
    for i, (p, q) in enumerate(CELL_EDGES):
        if {p, q} == {a, b}:
            return i
    return None


def _patches_of_case(case: int) -> tuple[tuple[int, ...], ...]:
    inside = [(case >> k) & 1 for k in range(8)]
    crossed = [e for e, (a, b) in enumerate(CELL_EDGES) if inside[a] != inside[b]]
    parent = {e: e for e in crossed}

    def root(e: int) -> int:
        while parent[e] != e:
            e = parent[e]
        return e

    for _, _, corners in _cell_faces():
        face_edges = [_edge_number(a, b) for i, a in enumerate(corners) for b in corners[i + 1:]]
        cut = [e for e in face_edges if e is not None and e in parent]
        if len(cut) == 2:
            parent[root(cut[0])] = root(cut[1])
        elif len(cut) == 4:  # ambiguous face: each inside corner is cut off by its own segment
            for k in corners:
                if inside[k]:
                    e0, e1 = (e for e in cut if k in CELL_EDGES[e])
                    parent[root(e0)] = root(e1)
    groups: dict[int, list[int]] = {}
    for e in crossed:
        groups.setdefault(root(e), []).append(e)
    minority = 1 if sum(inside) <= 4 else 0

    def order(edges: list[int]) -> tuple[int, int]:
        touched = {c for e in edges for c in CELL_EDGES[e]}
        return (min(c for c in touched if inside[c] == minority), min(c for c in touched if inside[c] != minority))

    return tuple(tuple(sorted(g)) for g in sorted(groups.values(), key=order))


def _ambiguous_neighbour(case: int, patches: tuple[tuple[int, ...], ...]) -> tuple[int, int, int] | None:
    inside = [(case >> k) & 1 for k in range(8)]
    for axis, side, corners in _cell_faces():
        face_edges = [_edge_number(a, b) for i, a in enumerate(corners) for b in corners[i + 1:]]
        cut = {e for e in face_edges if e is not None and inside[CELL_EDGES[e][0]] != inside[CELL_EDGES[e][1]]}
        if len(cut) == 4 and any(cut <= set(p) for p in patches):
            offset = [0, 0, 0]
            offset[axis] = 1 if side else -1
            return (offset[0], offset[1], offset[2])
    return None


_EDGE_RANK = {1: 0, 2: 1, 0: 2}  # axis -> rank among the edges leaving one lattice point: y (to -y), z, x


def _edge_axis(e: int) -> int:
    a, b = CELL_EDGES[e]
    return next(axis for axis in range(3) if CORNER_OFFSETS[a][axis] != CORNER_OFFSETS[b][axis])


@functools.lru_cache(maxsize=1)
def dual_tables() -> DualTables:
    patches = tuple(_patches_of_case(case) for case in range(256))
    return DualTables(patches, tuple(_ambiguous_neighbour(case, patches[case]) for case in range(256)))


@functools.lru_cache(maxsize=8)
def _device_tables(device: torch.device) -> dict[str, torch.Tensor]:
    t = dual_tables()
    check = [n is not None for n in t.ambiguous_neighbour]
    return {
        "corner_offsets": torch.tensor(CORNER_OFFSETS, dtype=torch.int64, device=device),  # (8, 3)
        "edges": torch.tensor(CELL_EDGES, dtype=torch.int64, device=device),  # (12, 2)
        "num_vd": torch.tensor(t.num_dual_vertices, dtype=torch.int64, device=device),  # (256,)
        "edge_to_patch": torch.tensor(t.edge_to_patch(), dtype=torch.int64, device=device),  # (256, 12)
        "check": torch.tensor(check, dtype=torch.bool, device=device),  # (256,)
        "check_offset": torch.tensor(
            [n if n is not None else (0, 0, 0) for n in t.ambiguous_neighbour], dtype=torch.int64, device=device
        ),  # (256, 3)
        "bits": 2 ** torch.arange(8, device=device),  # (8,)
        "edge_rank": torch.tensor([_EDGE_RANK[_edge_axis(e)] for e in range(12)], dtype=torch.int64, device=device),
    }


# ----------------------------------------------------------------------------------------------------------------
# Extraction


@dataclass
class SurfaceMesh:
    """A triangle mesh with per-vertex attributes (torch tensors on the device of the inputs)."""

    vertices: torch.Tensor  # (V, 3) float32
    faces: torch.Tensor  # (F, 3) int32 indices into vertices
    vertex_attrs: torch.Tensor | None = None  # (V, C) float32, interpolated like the vertices

    @property
    def is_empty(self) -> bool:
        return self.vertices.shape[0] == 0 or self.faces.shape[0] == 0


def flexicubes(
    vertex_coords: torch.Tensor,
    vertex_positions: torch.Tensor,
    vertex_sdf: torch.Tensor,
    cell_coords: torch.Tensor,
    cell_weights: torch.Tensor,
    resolution: int,
    vertex_attrs: torch.Tensor | None = None,
    *,
    absent_sdf: float = 1.0,
    absent_attrs: torch.Tensor | None = None,
    absent_inside: torch.Tensor | None = None,
    grid_origin: float = -0.5,
    weight_scale: float = 0.99,
) -> SurfaceMesh:
    """Extract the zero level set of a sparse grid as a triangle mesh (FlexiCubes, inference triangulation).

    vertex_coords (V, 3) int: unique lattice points in [0, R]^3 (any order); vertex_positions (V, 3) float: where
    they are (deformed); vertex_sdf (V,): their values (< 0 inside); vertex_attrs (V, C) or None: values to
    interpolate onto the mesh vertices. cell_coords (N, 3) int: unique cells in [0, R)^3 that carry weights;
    cell_weights (N, 21) raw, before activation: beta 12 (per edge), alpha 8 (per corner), gamma 1; a cell that is
    not listed has raw weights 0. Unlisted lattice points: value `absent_sdf` (must be >= 0), position
    grid_origin + coords / R, attributes `absent_attrs` (C,) (zeros when None). `absent_inside` (G, G, G) bool, R a
    multiple of G: coarse cells (R / G lattice steps a side) whose unlisted lattice points are inside instead, at
    -absent_sdf. Every cell around such a point must then lie in those coarse cells, with its listed corners inside
    (see `mesh_extraction`), so that no surface forms there: candidate cells come from the listed inside points only.
    Activations: beta, alpha = 1 + weight_scale * tanh(raw); gamma = weight_scale * sigmoid(raw) + (1 - weight_scale)/2.
    """
    device = vertex_positions.device
    dtype = torch.promote_types(vertex_positions.dtype, torch.float32)  # half inputs are computed in float32
    R = int(resolution)
    n_attr = 0 if vertex_attrs is None else vertex_attrs.shape[1]
    _check_inputs(vertex_coords, vertex_positions, vertex_sdf, cell_coords, cell_weights, R, vertex_attrs, absent_sdf)
    if absent_inside is not None and (absent_inside.dtype != torch.bool or absent_inside.ndim != 3
                                      or len(set(absent_inside.shape)) != 1 or R % absent_inside.shape[0]):  # fmt: skip
        raise InputError(f"flexicubes: absent_inside must be a (G, G, G) bool grid with {R} a multiple of G, got "
                         f"{tuple(absent_inside.shape)} {absent_inside.dtype}")  # fmt: skip
    tab = _device_tables(device)
    offsets, edges = tab["corner_offsets"], tab["edges"]

    # 1. Listed lattice points and weighted cells, sorted by key (x-major), for lookups.
    lattice = R + 1
    vkeys = _keys(vertex_coords.long(), lattice)
    vkeys, vorder = torch.sort(vkeys)
    if vkeys.numel() > 1 and bool((vkeys[1:] == vkeys[:-1]).any()):
        raise InputError("flexicubes: vertex_coords has repeated lattice points; list each point once")
    ckeys_sorted, corder = torch.sort(_keys(cell_coords.long(), R))
    if ckeys_sorted.numel() > 1 and bool((ckeys_sorted[1:] == ckeys_sorted[:-1]).any()):
        raise InputError("flexicubes: cell_coords has repeated cells; list each voxel once")

    # 2. Candidate cells: the cells around every inside vertex; keep those with mixed corner signs.
    inside_coords = vertex_coords.long()[vertex_sdf < 0]  # (M, 3)
    cand = []
    for k in range(8):  # the cell that has this vertex as its corner k
        c = inside_coords - offsets[k]
        cand.append(_keys(c[((c >= 0) & (c < R)).all(dim=1)], R))
    cell_keys = torch.unique(torch.cat(cand))  # (K,) sorted = the dense x-major cell order
    del cand
    cells = _coords(cell_keys, R)  # (K, 3)
    corner_key_offsets = _keys(offsets, lattice)  # (8,) lattice-key step to corner k
    cell_base = _keys(cells, lattice)  # (K,) lattice key of corner 0
    corner_vid = _lookup(vkeys, cell_base[:, None] + corner_key_offsets[None])  # (K, 8) index into vkeys or -1
    corner_vid = torch.where(corner_vid >= 0, vorder[corner_vid.clamp(min=0)], -1)  # (K, 8) row in the inputs or -1
    corner_sdf = _gather_or(vertex_sdf.to(dtype), corner_vid, torch.tensor(absent_sdf, dtype=dtype, device=device))
    if absent_inside is not None:  # unlisted corners in a sealed coarse cell are inside
        row, k = torch.nonzero(corner_vid < 0, as_tuple=True)
        coarse = ((cells[row] + offsets[k]) // (R // absent_inside.shape[0])).clamp(max=absent_inside.shape[0] - 1)
        sealed = absent_inside[coarse[:, 0], coarse[:, 1], coarse[:, 2]]
        corner_sdf[row[sealed], k[sealed]] = -absent_sdf
    inside = corner_sdf < 0  # (K, 8)
    n_inside = inside.sum(dim=1)
    surface = (n_inside > 0) & (n_inside < 8)
    cells, cell_keys, cell_base = cells[surface], cell_keys[surface], cell_base[surface]  # (S, 3), (S,), (S,)
    corner_vid, corner_sdf, inside = corner_vid[surface], corner_sdf[surface], inside[surface]
    S = cells.shape[0]
    if S == 0:
        return _empty_mesh(device, dtype, vertex_attrs)

    # 3. Case ids, with the ambiguous-face check against the neighbour cell.
    case = (inside.long() * tab["bits"]).sum(dim=1)  # (S,)
    check = tab["check"][case]
    problem_keys = cell_keys[check]  # sorted (subset of sorted keys)
    neighbour = cells[check] + tab["check_offset"][case[check]]
    in_range = ((neighbour >= 0) & (neighbour < R)).all(dim=1)
    neighbour_is_problem = in_range & (_lookup(problem_keys, _keys(neighbour.clamp(0, R - 1), R)) >= 0)
    flipped = torch.nonzero(check).squeeze(1)[neighbour_is_problem]
    case = case.index_put((flipped,), 255 - case[flipped])

    # 4. Cell weights (unlisted cells: raw 0), activated.
    wrow = _lookup(ckeys_sorted, cell_keys)
    raw = torch.where((wrow >= 0)[:, None], cell_weights.to(dtype)[corder[wrow.clamp(min=0)]], 0.0)  # (S, 21)
    beta = torch.tanh(raw[:, :12]) * weight_scale + 1
    alpha = torch.tanh(raw[:, 12:20]) * weight_scale + 1
    gamma = torch.sigmoid(raw[:, 20]) * weight_scale + (1 - weight_scale) / 2

    # 5. Crossed cell edges ("pairs" = (cell, edge) with a sign change), in cell-major, edge-minor order.
    crossed = inside[:, edges[:, 0]] != inside[:, edges[:, 1]]  # (S, 12)
    p_cell, p_edge = torch.nonzero(crossed, as_tuple=True)  # (P,)
    ca, cb = edges[p_edge, 0], edges[p_edge, 1]  # corner numbers of the two ends
    va, vb = corner_vid[p_cell, ca], corner_vid[p_cell, cb]  # (P,) input rows or -1
    # A lattice edge is its first endpoint a plus its direction; ordering by (a, rank) with y < z < x is the
    # lexicographic order of (a, b) (y edges run to a smaller key, x edges to the largest), as in the official code.
    edge_key = (cell_base[p_cell] + corner_key_offsets[ca]) * 3 + tab["edge_rank"][p_edge]
    _, p_surf_edge, edge_count = torch.unique(edge_key, return_inverse=True, return_counts=True)

    # 6. Dual vertices: one per patch; numbered by (patches in the cell, cell, patch).
    num_vd = tab["num_vd"][case]  # (S,)
    by_count = torch.argsort(num_vd, stable=True)
    first_vd = torch.empty_like(num_vd)
    first_vd[by_count] = torch.cumsum(num_vd[by_count], 0) - num_vd[by_count]
    total_vd = int(num_vd.sum())
    p_vd = first_vd[p_cell] + tab["edge_to_patch"][case[p_cell], p_edge]  # (P,)

    sa, sb = corner_sdf[p_cell, ca], corner_sdf[p_cell, cb]
    wa, wb = (sa * alpha[p_cell, ca])[:, None], (sb * alpha[p_cell, cb])[:, None]  # (P, 1) alpha-weighted values
    p_beta = beta[p_cell, p_edge][:, None]  # (P, 1)
    beta_sum = torch.zeros(total_vd, 1, dtype=dtype, device=device).index_add_(0, p_vd, p_beta)

    def dual_mean(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """Per pair the weighted zero crossing between the end values xa, xb (P, D); beta-mean per dual vertex."""
        crossing = (xa * wb + xb * -wa) / (wb + -wa)
        summed = torch.zeros(total_vd, xa.shape[1], dtype=dtype, device=device).index_add_(0, p_vd, crossing * p_beta)
        return summed / beta_sum

    absent_pos_a = grid_origin + (cells[p_cell] + offsets[ca]).to(dtype) / R
    absent_pos_b = grid_origin + (cells[p_cell] + offsets[cb]).to(dtype) / R
    pos = vertex_positions.to(dtype)
    vd = dual_mean(_gather_or(pos, va, absent_pos_a), _gather_or(pos, vb, absent_pos_b))  # (total_vd, 3)
    vd_attrs = None
    if vertex_attrs is not None:
        default = torch.zeros(n_attr, dtype=dtype, device=device)
        if absent_attrs is not None:
            default = absent_attrs.to(device, dtype)
        attrs = vertex_attrs.to(dtype)
        vd_attrs = dual_mean(_gather_or(attrs, va, default), _gather_or(attrs, vb, default))  # (total_vd, C)

    # 7. Quads: crossed edges shared by 4 cells (edges on the grid boundary have fewer), cells in x-major order.
    full = edge_count[p_surf_edge] == 4
    _, perm = torch.sort(p_surf_edge[full], stable=True)
    quad = p_vd[full][perm].view(-1, 4)  # (Q, 4) the 4 cells round the edge, x-major: (-,-), (-,+), (+,-), (+,+)
    quad_gamma = gamma[p_cell[full][perm]].view(-1, 4)
    first_outside = sa[full][perm].view(-1, 4)[:, 0] > 0  # value at the edge's first endpoint
    turn_out = torch.tensor([0, 1, 3, 2], device=device)
    turn_in = torch.tensor([2, 3, 1, 0], device=device)
    quad = torch.cat([quad[first_outside][:, turn_out], quad[~first_outside][:, turn_in]])  # (Q, 4) cyclic
    quad_gamma = torch.cat([quad_gamma[first_outside][:, turn_out], quad_gamma[~first_outside][:, turn_in]])

    # 8. Split each quad along the diagonal with the larger gamma product.
    split_02 = (quad_gamma[:, 0] * quad_gamma[:, 2] > quad_gamma[:, 1] * quad_gamma[:, 3])[:, None]
    along_02 = quad[:, torch.tensor([0, 1, 2, 0, 2, 3], device=device)]  # (Q, 6) two triangles
    along_13 = quad[:, torch.tensor([0, 1, 3, 3, 1, 2], device=device)]
    faces = torch.where(split_02, along_02, along_13).reshape(-1, 3)  # (2Q, 3)
    return SurfaceMesh(vd, faces.to(torch.int32), vd_attrs)


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _keys(coords: torch.Tensor, extent: int) -> torch.Tensor:
    """(M, 3) int64 in [0, extent)^3 -> (M,) int64 x-major keys (sorting them sorts the points lexicographically)."""
    return (coords[:, 0] * extent + coords[:, 1]) * extent + coords[:, 2]


def _coords(keys: torch.Tensor, extent: int) -> torch.Tensor:
    return torch.stack([keys // (extent * extent), (keys // extent) % extent, keys % extent], dim=1)


def _lookup(sorted_keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Index of each query in `sorted_keys`, -1 where absent."""
    if sorted_keys.numel() == 0:
        return torch.full_like(queries, -1)
    at = torch.searchsorted(sorted_keys, queries).clamp(max=sorted_keys.numel() - 1)
    return torch.where(sorted_keys[at] == queries, at, -1)


def _gather_or(values: torch.Tensor, rows: torch.Tensor, default: torch.Tensor) -> torch.Tensor:
    """values[rows] where rows >= 0, else `default` (broadcast)."""
    picked = values[rows.clamp(min=0)]
    found = rows >= 0
    if picked.ndim > rows.ndim:
        found = found.unsqueeze(-1)
    return torch.where(found, picked, default)


def _empty_mesh(device: torch.device, dtype: torch.dtype, vertex_attrs: torch.Tensor | None) -> SurfaceMesh:
    attrs = None if vertex_attrs is None else torch.zeros(0, vertex_attrs.shape[1], dtype=dtype, device=device)
    return SurfaceMesh(
        torch.zeros(0, 3, dtype=dtype, device=device), torch.zeros(0, 3, dtype=torch.int32, device=device), attrs
    )


def _check_inputs(
    vertex_coords: torch.Tensor,
    vertex_positions: torch.Tensor,
    vertex_sdf: torch.Tensor,
    cell_coords: torch.Tensor,
    cell_weights: torch.Tensor,
    R: int,
    vertex_attrs: torch.Tensor | None,
    absent_sdf: float,
) -> None:
    V = vertex_coords.shape[0]
    if R < 1:
        raise InputError(f"flexicubes: resolution must be a positive integer, got {R}")
    _check_integer_rows("vertex_coords", vertex_coords, "V")
    if vertex_positions.shape != (V, 3) or not vertex_positions.is_floating_point():
        raise InputError(
            f"flexicubes: vertex_positions must be a ({V}, 3) float tensor, got {tuple(vertex_positions.shape)} "
            f"{vertex_positions.dtype}"
        )
    if vertex_sdf.shape != (V,):
        raise InputError(f"flexicubes: vertex_sdf must have shape ({V},), got {tuple(vertex_sdf.shape)}")
    if vertex_attrs is not None and (vertex_attrs.ndim != 2 or vertex_attrs.shape[0] != V):
        raise InputError(f"flexicubes: vertex_attrs must be (V={V}, C), got {tuple(vertex_attrs.shape)}")
    _check_integer_rows("cell_coords", cell_coords, "N")
    if cell_weights.shape != (cell_coords.shape[0], 21):
        raise InputError(
            f"flexicubes: cell_weights must be ({cell_coords.shape[0]}, 21) (beta 12, alpha 8, gamma 1), got "
            f"{tuple(cell_weights.shape)}"
        )
    if not absent_sdf >= 0:
        raise InputError(f"flexicubes: absent_sdf must be >= 0 (unlisted lattice points are outside), got {absent_sdf}")
    if V and (int(vertex_coords.min()) < 0 or int(vertex_coords.max()) > R):
        raise InputError(f"flexicubes: vertex_coords must lie in [0, {R}] (resolution {R})")
    if cell_coords.shape[0] and (int(cell_coords.min()) < 0 or int(cell_coords.max()) >= R):
        raise InputError(f"flexicubes: cell_coords must lie in [0, {R - 1}] (resolution {R})")


def _check_integer_rows(name: str, coords: torch.Tensor, rows: str) -> None:
    if coords.ndim != 2 or coords.shape[1] != 3 or coords.is_floating_point():
        raise InputError(
            f"flexicubes: {name} must be an ({rows}, 3) integer tensor, got {tuple(coords.shape)} {coords.dtype}"
        )
