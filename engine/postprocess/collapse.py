"""Data-parallel quadric edge collapse: a triangle mesh down to a face count in rounds, in torch (CPU or CUDA).

The classic simplifier collapses one edge at a time, always the cheapest (quadric error, `quadric.py`). Here a
round collapses many edges at once, chosen so that no two of them touch a common face:

1. Edges: the half-edges sorted by their (low, high) vertex pair; each run of equal keys is one edge, with the
   faces on it (1: border, 2: interior, more: non-manifold, never collapsed, nor is any edge at its ends).
2. Costs: each edge's merged quadric gives the position of the merged vertex and its error. The cheapest
   `CANDIDATE_SHARE` of the collapsible edges are this round's candidates, in `COST_TIERS` tiers of rising cost.
3. Selection, `PASSES` times: a candidate wins when its priority (snags, cost tier, a hash of its index, its
   index) is the lowest among all candidates with an end in the closed 1-rings of its two ends (two rounds of
   vertex-claiming scatter-min). Two winners then share no face, so each one's checks see exactly the mesh it
   will change. Plain cost order would do too, but where the cost varies smoothly over the surface it has few
   local minima; the hash scatters the winners within a tier. A winner is rejected when a face around it
   would fold over (its normal turns by more than acos `FLIP_COS` in this collapse, or by more than acos
   `FACING_COS` from the face's normal in the input) or become a much thinner sliver, or when it would break
   the manifold: its ends share a neighbour that is not across one of its faces (the link condition), it joins
   two border vertices through the inside, or a vertex across it has valence 3. Rejections leave snags on the
   ends, which lower their edges' priority in later rounds. Accepted collapses block the candidates around
   them; the next pass picks again among the rest. Near the target only the cheapest accepted collapses that
   fit the remaining face budget stay, so the count lands on it.
4. Collapse: each taken edge's high end becomes its low end, at the new position, with the summed quadric;
   faces with a repeated vertex go; unused vertices and dead faces are compacted away.

One host read per round (face, vertex and edge counts: the stop test and the compaction sizes); every other
step is a fixed-size tensor operation. Launching a round's ~1,100 operations from Python costs more than the GPU
needs to run them, so on CUDA the selection passes (the same kernels on the same shapes, three times) are captured
once per round and replayed (`cuda_graphs.RepeatedCall`). Ties resolve by edge index, so the result does not
depend on thread timing (only the float sums of the initial quadrics may differ in their last bits on CUDA).
Positions and quadrics are float64, structure of arrays ((3, V), (10, V)), in a frame centred on the mesh with a
bounding-box diagonal of 1.

Letters: V vertices, F faces, H = 3F half-edges (half-edge 3 f + k runs from corner k of face f to corner
k + 1), E edges.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch

from ..cuda_graphs import CudaGraphBackend, RepeatedCall
from .quadric import best_position, vertex_quadrics

MAX_ROUNDS = 60  # a round removes ~12-15 % of the faces: 1 M -> 30k faces takes ~23 rounds, -> 5k ~32
STALL_ROUNDS = 3  # stop after this many rounds in a row without a collapse
PASSES = 3  # selection passes per round (each one fills gaps that the previous one left; more add little)
CANDIDATE_SHARE = 0.5  # share of the collapsible edges, cheapest first, that may collapse in a round
COST_TIERS = 64  # the candidates fall in this many tiers of rising cost; a lower tier always wins (< 2^10)
FLIP_COS = 0.15  # a face whose normal would turn by more than acos(this) (~81 degrees) blocks the collapse
FACING_COS = 0.3  # ... or by more than acos(this) (~73 degrees) from the face's normal in the input mesh
SLIVER = 0.02  # 2 x area / sum of squared sides below this (equilateral: 0.29) and thinner than before blocks
STOP_SLACK = 0.002  # stop once the face count is within this fraction above the target

_SENTINEL = torch.iinfo(torch.int64).max  # sort key of dead half-edges (after every live one)
_NO_PRIORITY = torch.iinfo(torch.int64).max  # the priority of an edge that is not a candidate


def collapse_to_count(vertices: torch.Tensor, faces: torch.Tensor, target: int,
                      graphs: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadric edge collapse of a triangle mesh to about `target` faces, on the tensors' device.

    vertices (V, 3) float, faces (F, 3) integer, all finite. Returns (vertices (V', 3) float32, faces (F', 3)
    int64) with unused vertices dropped and no face with a repeated vertex. F' lands on the target or just above
    it (within `STOP_SLACK`, or one face), never below, unless the mesh runs out of collapsible edges first
    (non-manifold edges, closed parts of four faces); a mesh already at or below the target only loses its
    unused vertices. Collapses keep a manifold mesh manifold, consistently oriented and of the same genus.
    On CUDA each round's selection passes replay from one CUDA graph (`graphs=False`: eagerly, the same kernels).
    """
    if faces.shape[0] == 0:
        return vertices.new_zeros((0, 3), dtype=torch.float32), faces.new_zeros((0, 3), dtype=torch.int64)
    positions = vertices.to(torch.float64).T  # (3, V)
    low, high = positions.amin(1, keepdim=True), positions.amax(1, keepdim=True)
    centre = 0.5 * (low + high)
    scale = (high - low).norm().clamp(min=1e-30)
    mesh = _Mesh.start(((positions - centre) / scale).contiguous(), faces.to(torch.int64))
    backend = CudaGraphBackend(faces.device, settle_before_capture=False) if graphs and faces.is_cuda else None
    with RepeatedCall(backend) as repeat:
        mesh = _rounds(mesh, target, repeat)
    return (mesh.positions * scale + centre).T.to(torch.float32).contiguous(), mesh.faces


def _rounds(mesh: _Mesh, target: int, repeat: RepeatedCall) -> _Mesh:
    """Collapse rounds until the face count is within `STOP_SLACK` of `target` or nothing collapses any more."""
    alive = torch.ones(mesh.faces.shape[0], dtype=torch.bool, device=mesh.faces.device)  # later: a round's survivors
    previous, stalled = None, 0
    for round_index in range(MAX_ROUNDS + 1):
        pending = _PendingMesh.settle(mesh.faces, alive, mesh.positions.shape[1])
        n_faces, n_vertices, n_edges = pending.counts.tolist()  # the round's one host read
        mesh, edges = pending.compact(mesh, n_faces, n_vertices, n_edges)
        if round_index == 0:
            mesh.quadrics = vertex_quadrics(mesh.positions, mesh.faces, edges.first[edges.count == 1])  # (once)
        stalled = stalled + 1 if n_faces == previous else 0
        if n_faces <= target * (1.0 + STOP_SLACK) or stalled == STALL_ROUNDS or round_index == MAX_ROUNDS:
            break
        previous = n_faces
        mesh, alive = _collapse_round(mesh, edges, n_faces - target, repeat)
    return mesh


@dataclass
class _Mesh:
    """What a round works on and hands on: per vertex (positions, quadrics, snags), per face (corners, facing)."""

    positions: torch.Tensor  # (3, V) float64
    quadrics: torch.Tensor  # (10, V) float64
    snags: torch.Tensor  # (V,) int64 rejected collapses at the vertex, halved every round, 0 once it moves
    faces: torch.Tensor  # (F, 3) int64
    facing: torch.Tensor  # (3, F) float64 unit normal the face had in the input (0 for a degenerate face)

    @staticmethod
    def start(positions: torch.Tensor, faces: torch.Tensor) -> "_Mesh":
        n_vertices = positions.shape[1]
        by_corner = faces.T.contiguous()  # (3, F)
        normal = _normal([positions.index_select(1, by_corner[k]) for k in range(3)])
        facing = normal / normal.norm(dim=0).clamp(min=1e-300)
        return _Mesh(positions, torch.zeros(10, n_vertices, dtype=positions.dtype, device=positions.device),
                     torch.zeros(n_vertices, dtype=torch.int64, device=positions.device), faces, facing)


# ---------------------------------------------------------------------------------------------------- edges

@dataclass
class _Edges:
    """The mesh's edges in ascending key order (key = low * stride + high), with the faces on each."""

    low: torch.Tensor  # (E,) int64 vertex, low < high
    high: torch.Tensor  # (E,) int64 vertex
    key: torch.Tensor  # (E,) int64, ascending (for `contains`)
    stride: int  # key multiplier (>= V)
    count: torch.Tensor  # (E,) int64 faces on the edge
    first: torch.Tensor  # (E,) int64 half-edge of one face on it
    second: torch.Tensor  # (E,) int64 half-edge of another face (meaningful where count >= 2)

    def contains(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(N,) vertex pairs -> (N,) bool: is (u, v) an edge of the mesh (binary search in the sorted keys)."""
        query = torch.minimum(u, v) * self.stride + torch.maximum(u, v)
        at = torch.searchsorted(self.key, query).clamp(max=self.key.shape[0] - 1)
        return self.key.index_select(0, at) == query


@dataclass
class _PendingMesh:
    """Faces after a round, renumbered and with their half-edges sorted, waiting for the counts to compact."""

    faces: torch.Tensor  # (F, 3) int64, vertices renumbered over the used ones; dead faces hold junk
    alive: torch.Tensor  # (F,) bool
    used: torch.Tensor  # (V,) bool: some live face uses the vertex
    key: torch.Tensor  # (3F,) int64 sorted half-edge keys; dead half-edges (_SENTINEL) last
    order: torch.Tensor  # (3F,) int64 half-edge of each sorted key
    first: torch.Tensor  # (3F,) bool: first of a run of equal live keys (one per edge)
    stride: int
    counts: torch.Tensor  # (3,) int64: live faces, used vertices, edges

    @staticmethod
    def settle(faces: torch.Tensor, alive: torch.Tensor, n_vertices: int) -> "_PendingMesh":
        stride = max(n_vertices, 1)
        alive3 = alive[:, None].expand(-1, 3).reshape(-1)  # (3F,)
        uses = torch.zeros(stride, dtype=torch.int64, device=faces.device)
        uses.index_add_(0, faces.reshape(-1), alive3.to(torch.int64))
        used = uses > 0
        renumber = torch.cumsum(used, 0) - 1  # increasing, so the key order survives the renumbering
        faces = _at(renumber, faces)
        start, end = faces.reshape(-1), faces.roll(-1, dims=1).reshape(-1)
        key = torch.minimum(start, end) * stride + torch.maximum(start, end)
        key, order = torch.sort(torch.where(alive3, key, _SENTINEL), stable=True)
        first = torch.ones_like(key, dtype=torch.bool)
        first[1:] = key[1:] != key[:-1]
        first &= key != _SENTINEL
        counts = torch.stack([alive.sum(), used.sum(), first.sum()])
        return _PendingMesh(faces, alive, used, key, order, first, stride, counts)

    def compact(self, mesh: _Mesh, n_faces: int, n_vertices: int, n_edges: int) -> tuple[_Mesh, _Edges]:
        """Drop dead faces and unused vertices (their counts known on the host now) from `mesh`."""
        kept_faces = _true_indices(self.alive, n_faces)
        kept_vertices = _true_indices(self.used, n_vertices)
        new_face = torch.cumsum(self.alive, 0) - 1  # (F_old,) position of each kept face
        n_half = 3 * n_faces
        order = self.order[:n_half]
        order = 3 * _at(new_face, order // 3) + order % 3  # half-edge numbers in the compacted faces
        starts = _true_indices(self.first[:n_half], n_edges)  # (E,) sorted position of each edge's first key
        ends = torch.cat([starts[1:], torch.full((1,), n_half, dtype=torch.int64, device=starts.device)])
        key = _at(self.key, starts)
        edges = _Edges(low=key // self.stride, high=key % self.stride, key=key, stride=self.stride,
                       count=ends - starts, first=_at(order, starts),
                       second=_at(order, (starts + 1).clamp(max=max(n_half - 1, 0))))
        return _Mesh(mesh.positions.index_select(1, kept_vertices), mesh.quadrics.index_select(1, kept_vertices),
                     _at(mesh.snags, kept_vertices), self.faces.index_select(0, kept_faces),
                     mesh.facing.index_select(1, kept_faces)), edges


# ---------------------------------------------------------------------------------------------------- round

def _collapse_round(mesh: _Mesh, edges: _Edges, budget: int, repeat: RepeatedCall) -> tuple[_Mesh, torch.Tensor]:
    """One round (steps 2-4 of the module docstring) -> (mesh, alive (F,)), not compacted yet.

    `budget`: how many faces may still go; `repeat(call, times)` runs the selection pass `times` times. The edges
    at a vertex with snags (rejected collapses) give way to the others, which would otherwise lose to them again
    and again while they win and fail (on a coarse mesh that stalls whole rounds).
    """
    positions, quadrics, snags, faces = mesh.positions, mesh.quadrics, mesh.snags, mesh.faces
    n_vertices, n_edges = positions.shape[1], edges.low.shape[0]
    device = positions.device
    low, high, count = edges.low, edges.high, edges.count
    index = torch.arange(n_edges, device=device)

    # 2. which edges may collapse, where to and at what cost
    flat = faces.reshape(-1)
    opposite0 = _at(flat, edges.first - edges.first % 3 + (edges.first + 2) % 3)  # third corner of each face on it
    opposite1 = _at(flat, edges.second - edges.second % 3 + (edges.second + 2) % 3)
    valence = _sum_at_ends(n_vertices, low, high, torch.ones_like(low))
    on_border = _sum_at_ends(n_vertices, low, high, (count == 1).to(torch.int64)) > 0
    locked = _sum_at_ends(n_vertices, low, high, (count > 2).to(torch.int64)) > 0
    thin = (valence <= 3) & ~on_border  # an interior vertex of valence 3: an edge across it collapses into a fin
    interior = count == 2
    collapsible = (count <= 2) & ~_at(locked, low) & ~_at(locked, high)
    collapsible &= ~(interior & _at(on_border, low) & _at(on_border, high))  # joins two borders: a bow-tie vertex
    collapsible &= ~(interior & ((opposite0 == opposite1) | _at(thin, opposite0) | _at(thin, opposite1)))
    merged = quadrics.index_select(1, low) + quadrics.index_select(1, high)  # (10, E)
    target_position, error = best_position(merged, positions.index_select(1, low), positions.index_select(1, high))
    collapsible &= torch.isfinite(error)

    # cost order (exact, for the budget), candidates and their priorities
    cost = torch.where(error > 0, error, 0.0).to(torch.float32)  # (+0.0 for rounding below zero)
    cost = torch.where(collapsible, cost, float("inf"))
    by_cost = torch.sort(cost, stable=True).indices  # (E,) edge ids, cheapest first, ties by index
    rank = torch.empty_like(by_cost).scatter_(0, by_cost, index)
    share = (collapsible.sum() * CANDIDATE_SHARE).ceil().clamp(min=1).to(torch.int64)
    candidate = collapsible & (rank < share)
    tier = (rank * COST_TIERS // share).clamp(max=COST_TIERS)  # (non-candidates: COST_TIERS, never read)
    snagged = torch.maximum(_at(snags, low), _at(snags, high)).clamp(max=31)
    priority = (snagged << 57) | (tier << 47) | (_scramble(index) << 31) | index  # 5 + 10 + 16 + 31 bits, unique

    # 3. selection passes: the same kernels on the same shapes each time (`repeat` may replay them from a graph),
    # so each pass only updates these tensors in place
    before = _FaceShapes.of(positions, faces, mesh.facing, n_edges)
    taken = torch.zeros(n_edges, dtype=torch.bool, device=device)
    failed = torch.zeros(n_edges, dtype=torch.bool, device=device)
    removed = torch.zeros((), dtype=torch.int64, device=device)

    def selection_pass() -> None:
        ring_min = _min_over_rings(torch.where(candidate, priority, _NO_PRIORITY), low, high, n_vertices)  # (V,)
        won = candidate & (_at(ring_min, low) == priority) & (_at(ring_min, high) == priority)
        tag = _tag_ends(won, low, high, n_vertices)  # (V,) winning edge at each of its two ends, else -1
        good = won & _keeps_manifold(edges, tag) & _keeps_orientation(before, tag, target_position)
        failed.logical_or_(won & ~good)
        # the cheapest collapses that fit the face budget, in cost order
        gained = _at(torch.where(good, count, 0), by_cost).cumsum(0)
        good &= torch.empty_like(good).scatter_(0, by_cost, removed + gained <= budget)
        removed.add_(torch.where(good, count, 0).sum())
        taken.logical_or_(good)
        candidate.logical_and_(~won)
        near = _sum_at_ends(n_vertices, low, high, good.to(torch.int64))  # ends of accepted collapses
        near = near + _sum_at_ends(n_vertices, low, high, _at(near, high), _at(near, low))  # their closed 1-rings
        candidate.logical_and_((_at(near, low) == 0) & (_at(near, high) == 0))

    repeat(selection_pass, PASSES)

    # 4. collapse: high -> low
    kept_by = _tag_ends(taken, low, low, n_vertices)  # (V,) taken edge whose low end this is, else -1
    moved = kept_by >= 0
    by = kept_by.clamp(min=0)
    positions = torch.where(moved, target_position.index_select(1, by), positions)
    quadrics = quadrics + torch.where(moved, quadrics.index_select(1, _at(high, by)), 0.0)
    snags = torch.where(moved, 0, snags // 2 + _sum_at_ends(n_vertices, low, high, failed.to(torch.int64)))
    merge = torch.arange(n_vertices, device=device).scatter_reduce(0, high, torch.where(taken, low, high), "amin")
    faces = _at(merge, faces)
    alive = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    return _Mesh(positions, quadrics, snags, faces, mesh.facing), alive


def _min_over_rings(priority: torch.Tensor, low, high, n_vertices: int) -> torch.Tensor:
    """(E,) priorities -> (V,) the lowest priority of any edge with an end in each vertex's closed 1-ring."""
    at_vertex = torch.full((n_vertices,), _NO_PRIORITY, dtype=torch.int64, device=priority.device)
    at_vertex.scatter_reduce_(0, low, priority, "amin").scatter_reduce_(0, high, priority, "amin")
    ring = at_vertex.clone()
    return ring.scatter_reduce_(0, low, _at(at_vertex, high), "amin").scatter_reduce_(0, high, _at(at_vertex, low),
                                                                                       "amin")


def _tag_ends(chosen: torch.Tensor, low, high, n_vertices: int) -> torch.Tensor:
    """(E,) bool -> (V,) int64: the chosen edge at each of its ends (chosen edges share no vertex), else -1."""
    value = torch.where(chosen, torch.arange(chosen.shape[0], device=chosen.device), -1)
    tag = torch.full((n_vertices,), -1, dtype=torch.int64, device=chosen.device)
    return tag.scatter_reduce_(0, low, value, "amax").scatter_reduce_(0, high, value, "amax")


def _keeps_manifold(edges: _Edges, tag: torch.Tensor) -> torch.Tensor:
    """(E,) bool: the winner's ends share no neighbour besides the corners across its faces (the link condition).

    For every edge (x, y) where x is a winner's low end and y is not its high end, look (high end, y) up among
    the edges; each hit is one common neighbour. A winner with more common neighbours than faces would turn
    into a non-manifold edge or a fin. (No two winners have adjacent ends, so each edge serves one winner.)
    """
    n_edges = edges.low.shape[0]
    low, high = edges.low, edges.high
    t_low, t_high = _at(tag, low), _at(tag, high)
    w_low, w_high = t_low.clamp(min=0), t_high.clamp(min=0)
    from_low = (t_low >= 0) & (low == _at(low, w_low)) & (high != _at(high, w_low))
    from_high = (t_high >= 0) & (high == _at(low, w_high)) & (low != _at(high, w_high))
    winner = torch.where(from_low, t_low, torch.where(from_high, t_high, n_edges))
    partner = _at(high, winner.clamp(max=n_edges - 1))
    common = (from_low | from_high) & edges.contains(partner, torch.where(from_low, high, low))
    # Edges that found nothing add 0 to their own slot: no atomic contention on one spare slot (CUDA).
    shared = torch.zeros(n_edges, dtype=torch.int64, device=low.device)
    shared.index_add_(0, torch.where(common, winner, torch.arange(n_edges, device=low.device)), common.to(torch.int64))
    return shared <= edges.count


@dataclass
class _FaceShapes:
    """The faces before a round, as the orientation check needs them (structure of arrays)."""

    faces: torch.Tensor  # (3 corners, F) int64
    corners: list[torch.Tensor]  # 3 x (3, F) positions
    normal: torch.Tensor  # (3, F), length 2 x area
    double_area: torch.Tensor  # (F,)
    sides: torch.Tensor  # (F,) sum of the squared side lengths
    facing: torch.Tensor  # (3, F) unit normal in the input mesh (`_Mesh.facing`)
    has_facing: torch.Tensor  # (F,) bool: the face was not degenerate in the input
    spread: torch.Tensor  # (F,) int64 face index modulo E: where a face adds nothing to (no one hot slot)

    @staticmethod
    def of(positions: torch.Tensor, faces: torch.Tensor, facing: torch.Tensor, n_edges: int) -> "_FaceShapes":
        by_corner = faces.T.contiguous()
        corners = [positions.index_select(1, by_corner[k]) for k in range(3)]
        normal = _normal(corners)
        spread = torch.arange(faces.shape[0], device=faces.device) % n_edges
        return _FaceShapes(by_corner, corners, normal, normal.norm(dim=0), _sum_sq_sides(corners), facing,
                           facing.abs().sum(0) > 0, spread)


def _keeps_orientation(before: _FaceShapes, tag: torch.Tensor, target_position: torch.Tensor) -> torch.Tensor:
    """(E,) bool: no face left around the winner folds over or becomes a sliver thinner than it was.

    `tag` (V,) is from `_tag_ends`. A face touched by one end of a winner moves that corner to the winner's new
    position; a face holding both ends disappears and is not checked. "Folds": the face's normal turns by more
    than acos `FLIP_COS` in this collapse, or by more than acos `FACING_COS` from the normal the face had in the
    input (each collapse turning it a little could otherwise add up to a fold over many rounds).
    """
    n_edges = target_position.shape[1]
    t = [_at(tag, before.faces[k]) for k in range(3)]  # 3 x (F,)
    winner = torch.maximum(torch.maximum(t[0], t[1]), t[2])  # (F,) the one winner touching the face, else -1
    moves = [tk >= 0 for tk in t]
    checked = (moves[0].to(torch.int8) + moves[1] + moves[2]) == 1
    moved_to = target_position.index_select(1, winner.clamp(min=0))  # (3, F)
    after = [torch.where(m, moved_to, c) for m, c in zip(moves, before.corners)]
    normal = _normal(after)
    double_area, sides = normal.norm(dim=0), _sum_sq_sides(after)
    folds = ((normal * before.normal).sum(0) <= FLIP_COS * double_area * before.double_area) \
        & (before.double_area > 0)
    folds |= ((normal * before.facing).sum(0) <= FACING_COS * double_area) & before.has_facing
    sliver = (double_area < SLIVER * sides) & (double_area * before.sides < before.double_area * sides)
    bad = checked & (folds | sliver)
    blocked = torch.zeros(n_edges, dtype=torch.int64, device=tag.device)
    blocked.index_add_(0, torch.where(bad, winner, before.spread), bad.to(torch.int64))  # (see _keeps_manifold)
    return blocked == 0


# ---------------------------------------------------------------------------------------------------- helpers

def _normal(corners: list[torch.Tensor]) -> torch.Tensor:
    """3 x (3, F) triangle corners -> (3, F) normals of length 2 x area (counter-clockwise: outward)."""
    return torch.linalg.cross(corners[1] - corners[0], corners[2] - corners[0], dim=0)


def _sum_sq_sides(corners: list[torch.Tensor]) -> torch.Tensor:
    """3 x (3, F) triangle corners -> (F,) sum of the squared side lengths."""
    a, b, c = corners
    return ((b - a) ** 2).sum(0) + ((c - b) ** 2).sum(0) + ((a - c) ** 2).sum(0)


def _scramble(index: torch.Tensor) -> torch.Tensor:
    """(N,) int64 in [0, 2^31) -> (N,) int64 in [0, 2^16): a fixed pseudo-random shuffle (multiplicative hashing;
    every product stays below 2^63)."""
    h = (index * 2654435761) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 1540483477) & 0xFFFFFFFF
    return (h ^ (h >> 13)) >> 16


def _sum_at_ends(n_vertices: int, low: torch.Tensor, high: torch.Tensor, at_low: torch.Tensor,
                 at_high: torch.Tensor | None = None) -> torch.Tensor:
    """(V,) int64: per vertex, the sum of `at_low` over the edges it is the low end of and of `at_high` (default:
    the same values) over those it is the high end of."""
    out = torch.zeros(n_vertices, dtype=torch.int64, device=low.device)
    return out.index_add_(0, low, at_low).index_add_(0, high, at_low if at_high is None else at_high)


def _true_indices(mask: torch.Tensor, n_true: int) -> torch.Tensor:
    """(N,) bool with `n_true` set -> (n_true,) int64 indices of the set entries, ascending (no host sync).

    A stable partition: set entries go to the front in order, unset ones behind them, every slot written once.
    """
    index = torch.arange(mask.shape[0], device=mask.device)
    before = torch.cumsum(mask, 0)  # set entries up to and including each one
    slot = torch.where(mask, before - 1, n_true + index - before)
    return torch.empty_like(index).scatter_(0, slot, index)[:n_true]


def _at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] for a 1-D `values` and an integer index of any shape (index_select: faster on CPU)."""
    return values.index_select(0, index.reshape(-1)).reshape(index.shape)
