"""Data-parallel quadric edge collapse: a triangle mesh down to a face count in rounds, in torch (CPU or CUDA).

The classic simplifier collapses one edge at a time, always the cheapest (quadric error, `quadric.py`). Here a
round collapses many edges at once, chosen so that no two of them touch a common face:

1. Edges: the live faces' half-edges sorted by their (low, high) vertex pair; each run of equal keys is one edge,
   with the faces on it (1: border, 2: interior, more: non-manifold, never collapsed, nor is any edge at its ends).
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
   faces with a repeated vertex die.

A round works in place on fixed-size buffers, its slots (`_Slots`): dead faces stay in them (masked), merged-away
vertices too, and the edge arrays have a fixed capacity (the mesh's edge count never grows, so the count at a
round's start bounds every later round; unused slots are edges of no face between spare "trash" vertices, spread
over `TRASH_VERTICES` of them: scatters that all hit one address serialise on the GPU). Its only host read is
three counts (live faces, used vertices, edges) for the stop test. On CUDA the slot counts are powers of two and
the mesh moves to smaller slots (dead faces and unused vertices dropped, vertices renumbered in order) once its live
faces fit half the face slots; elsewhere the slots are exact and every round repacks. Every round in one slot
layout is the same ~1,000 kernels on the same shapes, which launching from Python costs far more than the GPU
needs to run them (10-12 ms a round against 1-8 ms), so on CUDA each layout's round is captured once and replayed
(`cuda_graphs.RepeatedCall`), by later meshes too when the graphs are kept (`RoundGraphs`). Ties resolve by edge
index, so the result does not depend on thread timing (only the float sums of the initial quadrics may differ in
their last bits on CUDA).
Positions and quadrics are float64, structure of arrays ((3, V), (10, V)), in a frame centred on the mesh with a
bounding-box diagonal of 1.

Letters: V vertex slots (the last `TRASH_VERTICES` of them trash), F face slots, H = 3F half-edges (half-edge
3 f + k runs from corner k of face f to corner k + 1), E edge slots.
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
# Device types whose slot counts are powers of two (a repack when the live faces fit half the face slots: ~5 rounds
# per layout, each replayed from the layout's graph, and the layouts recur across meshes); elsewhere the slots are
# the exact counts and every round repacks (no launches to save, no dead slots to carry).
ROUNDED_SLOTS = {"cuda"}
TRASH_VERTICES = 1024  # spare vertex slots after the used ones, the ends of the unused edge slots
KEPT_LAYOUTS = 12  # slot layouts (buffers + graph) a RoundGraphs keeps: a mesh uses ~5, most recur across meshes

_SENTINEL = torch.iinfo(torch.int64).max  # sort key of dead half-edges and unused edge slots (after every live one)
_NO_PRIORITY = torch.iinfo(torch.int64).max  # the priority of an edge that is not a candidate


def collapse_to_count(vertices: torch.Tensor, faces: torch.Tensor, target: int,
                      graphs: bool | RoundGraphs = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadric edge collapse of a triangle mesh to about `target` faces, on the tensors' device.

    vertices (V, 3) float, faces (F, 3) integer, all finite. Returns (vertices (V', 3) float32, faces (F', 3)
    int64) with unused vertices dropped and no face with a repeated vertex. F' lands on the target or just above
    it (within `STOP_SLACK`, or one face), never below, unless the mesh runs out of collapsible edges first
    (non-manifold edges, closed parts of four faces); a mesh already at or below the target only loses its
    unused vertices. Collapses keep a manifold mesh manifold, consistently oriented and of the same genus.
    On CUDA the rounds replay CUDA graphs, one per slot layout: made for this call and freed after it (True), or
    kept in `graphs` (a `RoundGraphs`) for later calls; False runs them eagerly (the same kernels on the same
    layouts, so the same result).
    """
    if target < 0:
        raise ValueError(f"the target face count must be 0 or more, got {target}")
    if faces.shape[0] == 0:
        return vertices.new_zeros((0, 3), dtype=torch.float32), faces.new_zeros((0, 3), dtype=torch.int64)
    positions = vertices.to(torch.float64).T  # (3, V)
    low, high = positions.amin(1, keepdim=True), positions.amax(1, keepdim=True)
    centre = 0.5 * (low + high)
    scale = (high - low).norm().clamp(min=1e-30)
    mesh = _Mesh.start(((positions - centre) / scale).contiguous(), faces.to(torch.int64))
    kept = graphs if isinstance(graphs, RoundGraphs) else RoundGraphs(faces.device, graphs)
    if kept.device != faces.device:
        raise ValueError(f"these round graphs are for {kept.device}, the mesh is on {faces.device}")
    try:
        mesh = _rounds(mesh, target, kept)
    finally:
        if kept is not graphs:
            kept.release()
    return (mesh.positions[:, :-TRASH_VERTICES] * scale + centre).T.to(torch.float32).contiguous(), mesh.faces


class RoundGraphs:
    """The rounds' buffers and CUDA graphs on one device, kept across decimations until `release()`.

    A round runs on slot buffers (`_Slots`) whose sizes are powers of two on CUDA (exact elsewhere), and on CUDA
    each slot layout's round is captured once and replayed by every later round in that layout, in this call or a
    later one: a first object pays ~5 captures, later objects of similar size none. Kept: ~0.1 GiB of buffers and
    ~0.5 GiB of graph pool for a 1 M-face mesh; a pipeline keeps one only while its networks stay loaded.
    """

    def __init__(self, device: torch.device | str, graphs: bool = True):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        capture = graphs and self.device.type == "cuda"
        self.repeat = RepeatedCall(CudaGraphBackend(self.device, settle_before_capture=False) if capture else None)
        self.rounded = self.device.type in ROUNDED_SLOTS
        self._slots: dict[tuple[int, int, int], _Slots] = {}  # least recently used first

    def slot_count(self, n: int) -> int:
        """Slots for n items: the next power of two where slots are rounded, else n."""
        return 1 << max(0, n - 1).bit_length() if self.rounded else n

    def slots(self, n_faces: int, n_vertices: int, n_edges: int) -> _Slots:
        """Buffers (and their round) for a mesh of these counts; kept for reuse where rounds are captured."""
        n_faces = self.slot_count(n_faces)
        key = (n_faces, self.slot_count(n_vertices + TRASH_VERTICES), min(self.slot_count(n_edges), 3 * n_faces))
        slots = self._slots.pop(key, None)
        if slots is None:
            slots = _Slots(*key, self.device)
        if self.repeat.backend is not None:
            self._slots[key] = slots  # (re)inserted last: the most recently used
            while len(self._slots) > KEPT_LAYOUTS:  # meshes of many sizes: drop the layouts unused the longest
                self.repeat.forget(self._slots.pop(next(iter(self._slots))))
        return slots

    def release(self) -> None:
        """Free the graphs and buffers (before the device's memory is needed elsewhere)."""
        self._slots.clear()
        self.repeat.release()


def _rounds(mesh: _Mesh, target: int, kept: RoundGraphs) -> _Mesh:
    """Collapse rounds until the face count is within `STOP_SLACK` of `target` or nothing collapses any more;
    returns the mesh compacted (no dead face, no unused vertex but the trash vertices, last)."""
    n_faces = mesh.faces.shape[0]
    mesh = mesh.repacked(n_faces, int(mesh.used().sum()))
    edges = _Edges.of(mesh.faces, mesh.alive, mesh.positions.shape[1], 3 * n_faces)  # to size the edge slots
    n_edges = int(edges.valid.sum())
    mesh.quadrics = vertex_quadrics(mesh.positions, mesh.faces, edges.first[edges.valid & (edges.count == 1)])
    n_vertices = mesh.positions.shape[1] - TRASH_VERTICES
    previous, stalled, slots = None, 0, None
    for round_index in range(MAX_ROUNDS + 1):
        stalled = stalled + 1 if n_faces == previous else 0
        if n_faces <= target * (1.0 + STOP_SLACK) or stalled == STALL_ROUNDS or round_index == MAX_ROUNDS:
            break
        if slots is None or kept.slot_count(n_faces) < slots.mesh.faces.shape[0]:
            # the edge count only falls, and never exceeds the live half-edges
            slots = kept.slots(n_faces, n_vertices, min(n_edges, 3 * n_faces))
            slots.load(mesh, n_faces, n_vertices, target)
            mesh = slots.mesh
        previous = n_faces
        kept.repeat(slots.call, key=slots)
        n_faces, n_vertices, n_edges = slots.counts.tolist()  # the round's one host read
        if n_edges > slots.n_edges:  # cannot happen (merging never adds an edge); dropped edges would corrupt
            raise RuntimeError(f"decimation round found {n_edges} edges for {slots.n_edges} slots")
    return mesh.repacked(n_faces, n_vertices)


@dataclass
class _Mesh:
    """What a round works on and hands on, in place: per vertex slot (positions, quadrics, snags), per face slot
    (corners, facing, alive)."""

    positions: torch.Tensor  # (3, V) float64
    quadrics: torch.Tensor  # (10, V) float64
    snags: torch.Tensor  # (V,) int64 rejected collapses at the vertex, halved every round, 0 once it moves
    faces: torch.Tensor  # (F, 3) int64; a dead face's corners are junk (but valid vertex slots)
    facing: torch.Tensor  # (3, F) float64 unit normal the face had in the input (0 for a degenerate face)
    alive: torch.Tensor  # (F,) bool

    @staticmethod
    def start(positions: torch.Tensor, faces: torch.Tensor) -> "_Mesh":
        n_vertices = positions.shape[1]
        by_corner = faces.T.contiguous()  # (3, F)
        normal = _normal([positions.index_select(1, by_corner[k]) for k in range(3)])
        facing = normal / normal.norm(dim=0).clamp(min=1e-300)
        return _Mesh(positions, torch.zeros(10, n_vertices, dtype=positions.dtype, device=positions.device),
                     torch.zeros(n_vertices, dtype=torch.int64, device=positions.device), faces, facing,
                     torch.ones(faces.shape[0], dtype=torch.bool, device=faces.device))

    def used(self) -> torch.Tensor:
        """(V,) bool: some live face uses the vertex."""
        uses = torch.zeros(self.positions.shape[1], dtype=torch.int64, device=self.faces.device)
        uses.index_add_(0, self.faces.reshape(-1), self.alive[:, None].expand(-1, 3).reshape(-1).to(torch.int64))
        return uses > 0

    def repacked(self, n_faces: int, n_vertices: int) -> "_Mesh":
        """New buffers holding the `n_faces` live faces and the `n_vertices` used vertices (renumbered in order, so
        edge keys keep their order) and `TRASH_VERTICES` trash vertices after them."""
        used = self.used()
        kept_faces = _true_indices(self.alive, n_faces)
        kept_vertices = torch.cat([_true_indices(used, n_vertices), kept_faces.new_full((TRASH_VERTICES,), -1)])
        renumber = torch.cumsum(used, 0) - 1
        faces = _at(renumber, self.faces.index_select(0, kept_faces))
        trash = kept_vertices < 0  # the new last slots: zero position, quadric and snags
        slot = kept_vertices.clamp(min=0)
        return _Mesh(torch.where(trash, 0.0, self.positions.index_select(1, slot)),
                     torch.where(trash, 0.0, self.quadrics.index_select(1, slot)),
                     torch.where(trash, 0, _at(self.snags, slot)), faces, self.facing.index_select(1, kept_faces),
                     torch.ones(n_faces, dtype=torch.bool, device=faces.device))


# ---------------------------------------------------------------------------------------------------- edges

@dataclass
class _Edges:
    """The mesh's edges in ascending key order (key = low * V + high) in a fixed number of slots; the slots after
    the last edge are unused (`valid` False, key `_SENTINEL`, both ends one trash vertex, no face)."""

    low: torch.Tensor  # (E,) int64 vertex, low < high
    high: torch.Tensor  # (E,) int64 vertex
    key: torch.Tensor  # (E,) int64, ascending (for `contains`)
    stride: int  # key multiplier (V)
    count: torch.Tensor  # (E,) int64 faces on the edge (0: unused slot)
    first: torch.Tensor  # (E,) int64 half-edge of one face on it
    second: torch.Tensor  # (E,) int64 half-edge of another face (meaningful where count >= 2)
    valid: torch.Tensor  # (E,) bool: the slot holds an edge
    n: torch.Tensor  # () int64 edges

    @staticmethod
    def of(faces: torch.Tensor, alive: torch.Tensor, n_vertices: int, capacity: int) -> "_Edges":
        """The edges of the live faces (vertex slots 0..n_vertices - 1, the last `TRASH_VERTICES` of them trash) in
        `capacity` slots, which must be at least the edge count; no host read."""
        n_half = 3 * faces.shape[0]
        device = faces.device
        alive3 = alive[:, None].expand(-1, 3).reshape(-1)  # (H,)
        start, end = faces.reshape(-1), faces.roll(-1, dims=1).reshape(-1)
        key = torch.minimum(start, end) * n_vertices + torch.maximum(start, end)
        key, order = torch.sort(torch.where(alive3, key, _SENTINEL), stable=True)
        first = torch.ones_like(key, dtype=torch.bool)
        first[1:] = key[1:] != key[:-1]
        first &= key != _SENTINEL
        # Sorted position of each edge's first key (a stable partition: every slot written once, no hot slot), then
        # the end of the last run; slots past the last edge get the end too, so they count no face.
        before = torch.cumsum(first, 0)
        n_edges = before[-1]
        position = torch.arange(n_half, device=device)
        slot = torch.where(first, before - 1, n_edges + position - before)
        live_half = 3 * alive.sum()
        starts = torch.cat([torch.empty_like(position).scatter_(0, slot, position), live_half.view(1)])
        index = torch.arange(capacity, device=device)
        begin = torch.where(index < n_edges, starts[:capacity], live_half)
        count = torch.where(index + 1 < n_edges, starts[1:capacity + 1], live_half) - begin
        valid = count > 0
        at = begin.clamp(max=n_half - 1)
        key = torch.where(valid, _at(key, at), _SENTINEL)
        # Unused slots join trash vertices, spread so that their scatters and atomics never pile onto one address.
        trash = n_vertices - TRASH_VERTICES + index % TRASH_VERTICES
        low, high = torch.where(valid, key // n_vertices, trash), torch.where(valid, key % n_vertices, trash)
        return _Edges(low=low, high=high, key=key, stride=n_vertices, count=count, first=_at(order, at),
                      second=_at(order, (at + 1).clamp(max=n_half - 1)), valid=valid, n=n_edges)

    def contains(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(N,) vertex pairs -> (N,) bool: is (u, v) an edge of the mesh (binary search in the sorted keys)."""
        query = torch.minimum(u, v) * self.stride + torch.maximum(u, v)
        at = torch.searchsorted(self.key, query).clamp(max=self.key.shape[0] - 1)
        return self.key.index_select(0, at) == query


# ---------------------------------------------------------------------------------------------------- round

class _Slots:
    """Fixed-size buffers a round works on in place, and that round as a call with no arguments (the same kernels
    on the same shapes every time, so it may be replayed from a graph): edges in `n_edges` slots, then
    `_collapse_round`; it writes the live faces, used vertices and edges into `counts`."""

    def __init__(self, n_faces: int, n_vertices: int, n_edges: int, device: torch.device):
        def zeros(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.mesh = _Mesh(zeros(3, n_vertices), zeros(10, n_vertices), zeros(n_vertices, dtype=torch.int64),
                          zeros(n_faces, 3, dtype=torch.int64), zeros(3, n_faces),
                          zeros(n_faces, dtype=torch.bool))
        self.n_edges = n_edges
        self.target = zeros(dtype=torch.int64)  # the face count to stop at
        self.counts = zeros(3, dtype=torch.int64)

    def load(self, source: _Mesh, n_faces: int, n_vertices: int, target: int) -> None:
        """Fill the buffers with `source`'s `n_faces` live faces and `n_vertices` used vertices (renumbered in
        order, so edge keys keep their order); the other slots are dead faces and unused vertices."""
        mesh, device = self.mesh, self.mesh.faces.device
        used = source.used()
        kept_faces = _true_indices(source.alive, n_faces)
        kept_vertices = _true_indices(used, n_vertices)
        renumber = torch.cumsum(used, 0) - 1
        mesh.faces[:n_faces] = _at(renumber, source.faces.index_select(0, kept_faces))
        # dead slots' corners spread over the vertices: their (zero) scatters then pile onto no single address
        spare = torch.arange(n_faces, mesh.faces.shape[0], device=device) % n_vertices
        mesh.faces[n_faces:] = spare[:, None]
        mesh.alive.fill_(False)
        mesh.alive[:n_faces] = True
        mesh.facing.zero_()
        mesh.facing[:, :n_faces] = source.facing.index_select(1, kept_faces)
        for name in ("positions", "quadrics", "snags"):
            buffer = getattr(mesh, name)
            buffer.zero_()
            buffer[..., :n_vertices] = getattr(source, name).index_select(-1, kept_vertices)
        self.target.fill_(target)

    def call(self) -> None:
        mesh = self.mesh
        edges = _Edges.of(mesh.faces, mesh.alive, mesh.positions.shape[1], self.n_edges)
        _collapse_round(mesh, edges, mesh.alive.sum() - self.target)
        self.counts.copy_(torch.stack([mesh.alive.sum(), mesh.used().sum(), edges.n]))


def _collapse_round(mesh: _Mesh, edges: _Edges, budget: torch.Tensor) -> None:
    """One round (steps 2-4 of the module docstring) on `mesh`'s buffers, in place.

    `budget` () int64: how many faces may still go. The edges at a vertex with snags (rejected collapses) give way
    to the others, which would otherwise lose to them again and again while they win and fail (on a coarse mesh
    that stalls whole rounds).
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
    collapsible = edges.valid & (count <= 2) & ~_at(locked, low) & ~_at(locked, high)
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

    # 3. selection passes
    before = _FaceShapes.of(positions, faces, mesh.facing, mesh.alive, n_edges)
    taken = torch.zeros(n_edges, dtype=torch.bool, device=device)
    failed = torch.zeros(n_edges, dtype=torch.bool, device=device)
    removed = torch.zeros((), dtype=torch.int64, device=device)
    for _ in range(PASSES):
        ring_min = _min_over_rings(torch.where(candidate, priority, _NO_PRIORITY), low, high, n_vertices)  # (V,)
        won = candidate & (_at(ring_min, low) == priority) & (_at(ring_min, high) == priority)
        tag = _tag_ends(won, low, high, n_vertices)  # (V,) winning edge at each of its two ends, else -1
        good = won & _keeps_manifold(edges, tag) & _keeps_orientation(before, tag, target_position)
        failed |= won & ~good
        # the cheapest collapses that fit the face budget, in cost order
        gained = _at(torch.where(good, count, 0), by_cost).cumsum(0)
        good &= torch.empty_like(good).scatter_(0, by_cost, removed + gained <= budget)
        removed = removed + torch.where(good, count, 0).sum()
        taken |= good
        candidate &= ~won
        near = _sum_at_ends(n_vertices, low, high, good.to(torch.int64))  # ends of accepted collapses
        near = near + _sum_at_ends(n_vertices, low, high, _at(near, high), _at(near, low))  # their closed 1-rings
        candidate &= (_at(near, low) == 0) & (_at(near, high) == 0)

    # 4. collapse: high -> low (every new value computed from the old ones before any is written back)
    kept_by = _tag_ends(taken, low, low, n_vertices)  # (V,) taken edge whose low end this is, else -1
    moved = kept_by >= 0
    by = kept_by.clamp(min=0)
    new_positions = torch.where(moved, target_position.index_select(1, by), positions)
    new_quadrics = quadrics + torch.where(moved, quadrics.index_select(1, _at(high, by)), 0.0)
    new_snags = torch.where(moved, 0, snags // 2 + _sum_at_ends(n_vertices, low, high, failed.to(torch.int64)))
    merge = torch.arange(n_vertices, device=device).scatter_reduce(0, high, torch.where(taken, low, high), "amin")
    new_faces = _at(merge, faces)
    distinct = (new_faces[:, 0] != new_faces[:, 1]) & (new_faces[:, 1] != new_faces[:, 2]) \
        & (new_faces[:, 2] != new_faces[:, 0])
    positions.copy_(new_positions)
    quadrics.copy_(new_quadrics)
    snags.copy_(new_snags)
    faces.copy_(new_faces)
    mesh.alive &= distinct


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
    alive: torch.Tensor  # (F,) bool: dead face slots are never checked

    @staticmethod
    def of(positions: torch.Tensor, faces: torch.Tensor, facing: torch.Tensor, alive: torch.Tensor,
           n_edges: int) -> "_FaceShapes":
        by_corner = faces.T.contiguous()
        corners = [positions.index_select(1, by_corner[k]) for k in range(3)]
        normal = _normal(corners)
        spread = torch.arange(faces.shape[0], device=faces.device) % n_edges
        return _FaceShapes(by_corner, corners, normal, normal.norm(dim=0), _sum_sq_sides(corners), facing,
                           facing.abs().sum(0) > 0, spread, alive)


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
    checked = ((moves[0].to(torch.int8) + moves[1] + moves[2]) == 1) & before.alive
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
