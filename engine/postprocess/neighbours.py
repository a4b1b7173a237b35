"""Exact k nearest neighbours among a fixed set of points: a uniform grid on the GPU, a k-d tree behind it.

The grid sorts the points by cell key (x fastest, so the three cells x-1, x, x+1 of one row are one run of the
sorted array) and answers each query from the points of the 3 x 3 x 3 cells around it: 9 runs, found by binary
search in the sorted keys, gathered into one padded (queries, candidates) block whose k smallest distances
`torch.topk` takes. That answer is exact when the k-th distance is within the query's margin, its distance to the
block's walls (every point outside the block is at least that far). Queries that fail (too few candidates, more
than `MAX_CANDIDATES`, or a k-th neighbour beyond the margin) try the next, `LEVEL_GROWTH` times coarser grid,
and after `GRID_LEVELS` grids the exact scipy k-d tree, built on first need.

Queries are sorted by candidate count so that each chunk pads to nearly its own rows' counts; a chunk holds at
most `CHUNK_CANDIDATES` (query, candidate) pairs, which bounds the memory. Per call the host waits on the device
twice per grid level (the candidate-count histogram, the failed queries) and never inside the chunk loop.

On the CPU the k-d tree alone is faster (scipy's tree is threaded C++), so the grid runs on the device types in
`GRID_DEVICE_TYPES`; tests add "cpu" to run the grid path here.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

GRID_DEVICE_TYPES = ("cuda",)  # where the grid answers first; elsewhere only the k-d tree
GRID_TARGET = 4.0  # cell size: the largest whose median occupancy, as a point sees it, is at most this (k = 8)
GRID_LEVELS = 3  # grids tried in turn, each LEVEL_GROWTH times coarser, before the k-d tree
LEVEL_GROWTH = 2.0
MAX_CANDIDATES = 4096  # a query with more points in its 27 cells skips that grid (padding it would cost too much)
CHUNK_CANDIDATES = 1 << 24  # (query, candidate) pairs per chunk: ~30 bytes each at the peak, so ~0.5 GiB
_PAD_SLACK = 1.25  # padding a chunk may add to its candidates before it pays to start another
_RANGE_CHUNK = 1 << 20  # queries per pass when finding their 9 runs (int64 keys: (Q, 9) x 8 bytes a tensor)
_MARGIN_SLACK = 1e-5  # of the cell size: float32 rounding of cell assignment, kept out of the exactness test


class NearestNeighbours:
    """The `k` nearest of `points` (N, 3) to any query, exactly (up to ties), on `device`.

    `k` is clamped to N. `grid` forces the grid on (True) or off (False); None uses it on `GRID_DEVICE_TYPES`.
    After each `query`, `answered` says how many queries each grid level answered and how many the tree did.
    """

    def __init__(self, points: np.ndarray, k: int, device: torch.device | str = "cpu", grid: bool | None = None):
        points = np.asarray(points, np.float64)
        if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
            raise ValueError(f"points are {points.shape}, expected (N, 3) with N >= 1")
        if k < 1:
            raise ValueError(f"k is {k}, expected at least 1")
        self.device = torch.device(device)
        self.k = min(int(k), points.shape[0])
        self._points = points
        self._tree: cKDTree | None = None
        self.use_grid = self.device.type in GRID_DEVICE_TYPES if grid is None else bool(grid)
        self.answered: list[int] = []
        if self.use_grid:
            self._xyz = torch.from_numpy(points.astype(np.float32)).to(self.device)  # (N, 3)
            self._lo = self._xyz.min(0).values
            self._cell = _cell_size(self._xyz, self._lo, max(GRID_TARGET * self.k / 8, 2.0))
            self._grids: list[_Grid] = []
        else:
            self._tree = _build_tree(points)  # now, so a caller building this in a thread overlaps it

    def query(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, 3) points -> (distance (Q, k) float32 ascending, index (Q, k) int64 into `points`) on `device`."""
        queries = torch.as_tensor(queries, dtype=torch.float32).to(self.device).reshape(-1, 3)
        q = queries.shape[0]
        d2 = torch.empty((q, self.k), dtype=torch.float32, device=self.device)  # squared distances
        index = torch.empty((q, self.k), dtype=torch.int64, device=self.device)
        todo = torch.arange(q, device=self.device)  # rows not yet answered
        self.answered = []
        for level in range(GRID_LEVELS if self.use_grid else 0):
            if todo.numel() == 0:
                break
            ok = self._level(level).search(queries[todo], self.k, d2, index, todo)
            self.answered.append(int(todo.numel()))
            todo = todo[~ok]
            self.answered[-1] -= int(todo.numel())
        self.answered.append(int(todo.numel()))
        if todo.numel():
            self._from_tree(queries[todo], todo, d2, index)
        return d2.sqrt_(), index

    def _level(self, level: int) -> _Grid:
        while len(self._grids) <= level:
            self._grids.append(_Grid(self._xyz, self._lo, self._cell * LEVEL_GROWTH ** len(self._grids)))
        return self._grids[level]

    def _from_tree(self, queries: torch.Tensor, rows: torch.Tensor, d2: torch.Tensor, index: torch.Tensor) -> None:
        if self._tree is None:
            self._tree = _build_tree(self._points)
        dist, idx = self._tree.query(queries.cpu().numpy().astype(np.float64), k=self.k, workers=-1)
        dist = torch.from_numpy(np.asarray(dist, np.float32).reshape(-1, self.k)).to(self.device)
        d2[rows] = dist * dist
        index[rows] = torch.from_numpy(np.asarray(idx, np.int64).reshape(-1, self.k)).to(self.device)


class _Grid:
    """The points sorted by cell key at one cell size; `search` answers the queries it can answer exactly."""

    def __init__(self, xyz: torch.Tensor, lo: torch.Tensor, cell: float):
        self.lo, self.cell = lo, cell
        coords = torch.floor((xyz - lo) / cell).long()  # (N, 3), >= 0
        self.dims = coords.max(0).values + 1  # (3,) cells per axis
        self.size = self.dims + 4  # key space: a coordinate c is stored as c + 2, so c in [-2, dims + 1] fits
        self.keys, self.order = torch.sort(self._key(coords + 2))  # (N,) sorted keys, the points' order
        self.xyz = xyz[self.order].T.contiguous()  # (3, N) in key order: one contiguous column per axis

    def _key(self, c: torch.Tensor) -> torch.Tensor:
        return (c[..., 2] * self.size[1] + c[..., 1]) * self.size[0] + c[..., 0]

    def search(self, queries: torch.Tensor, k: int, d2: torch.Tensor, index: torch.Tensor,
               rows: torch.Tensor) -> torch.Tensor:
        """Answer queries (Q, 3) into d2/index at `rows` where exact -> (Q,) bool, which were."""
        start, count, margin = self._runs(queries)  # (Q, 9) int32 x 2, (Q,)
        total = count.sum(1)  # (Q,) candidates
        order = torch.sort(total, stable=True).indices  # fewest candidates first, so chunks pad little
        hist = torch.bincount(total.clamp(max=MAX_CANDIDATES + 1), minlength=MAX_CANDIDATES + 2).cpu().numpy()
        ok = torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)
        j = torch.arange(MAX_CANDIDATES, dtype=torch.int32, device=queries.device)  # slot numbers
        for begin, end, width in _plan(hist, k):
            sel = order[begin:end]
            dist, pos = self._candidates(queries[sel], start[sel], count[sel], j[:width])  # (R, P) x 2
            best, at = torch.topk(dist, k, dim=1, largest=False)  # (R, k) ascending
            d2[rows[sel]] = best
            index[rows[sel]] = self.order[pos.gather(1, at)]
            ok[sel] = best[:, -1] <= margin[sel].clamp(min=0) ** 2
        return ok

    def _runs(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per query the 9 runs of sorted points (rows of 3 cells) around it and its margin to the block's walls."""
        q = queries.shape[0]
        start = torch.empty((q, 9), dtype=torch.int32, device=queries.device)
        count = torch.empty((q, 9), dtype=torch.int32, device=queries.device)
        margin = torch.empty(q, dtype=torch.float32, device=queries.device)
        dy, dz = torch.meshgrid(torch.arange(-1, 2, device=queries.device), torch.arange(-1, 2, device=queries.device),
                                indexing="ij")
        step = torch.stack([torch.zeros_like(dy), dy, dz], -1).reshape(9, 3)  # (9, 3) row offsets
        for a in range(0, q, _RANGE_CHUNK):
            p = queries[a:a + _RANGE_CHUNK]
            c = torch.floor((p - self.lo) / self.cell).long()  # (R, 3)
            c = torch.maximum(torch.minimum(c, self.dims), torch.full_like(self.dims, -1))  # far queries: edge cells
            middle = self._key(c[:, None, :] + 2 + step)  # (R, 9) key of each row's middle cell
            first = torch.searchsorted(self.keys, middle - 1, out_int32=True)
            last = torch.searchsorted(self.keys, middle + 1, right=True, out_int32=True)
            start[a:a + _RANGE_CHUNK], count[a:a + _RANGE_CHUNK] = first, last - first
            wall_lo = self.lo + (c - 1).float() * self.cell  # (R, 3) the block's lower corner
            inside = torch.minimum(p - wall_lo, wall_lo + 3 * self.cell - p)  # negative outside the block
            margin[a:a + _RANGE_CHUNK] = inside.min(1).values - _MARGIN_SLACK * self.cell
        return start, count, margin

    def _candidates(self, queries: torch.Tensor, start: torch.Tensor, count: torch.Tensor,
                    j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distances (R, P) to each query's candidates, +inf past its count, and their sorted positions."""
        # (R, 9) slot where each run ends; summed down the columns of the transpose: CUDA's scan along a row of 9
        # takes ~0.36 ms per chunk, a scan over the outer axis a few microseconds
        end = count.T.contiguous().cumsum(0, dtype=torch.int32).T.contiguous()
        run = torch.searchsorted(end, j.expand(queries.shape[0], -1).contiguous(), right=True)  # (R, P) in [0, 9]
        valid = run < 9
        pos = (start - end + count).long().gather(1, run.clamp_(max=8))  # (R, P) run's start minus its first slot
        del run  # the peak is here: keep it to pos, valid and the distance's terms (~30 bytes a pair)
        pos += j  # position in the sorted points
        pos.masked_fill_(~valid, 0)
        dist = (self.xyz[0][pos] - queries[:, 0:1]).square_()
        dist += (self.xyz[1][pos] - queries[:, 1:2]).square_()
        dist += (self.xyz[2][pos] - queries[:, 2:3]).square_()
        return dist.masked_fill_(~valid, float("inf")), pos


def _plan(hist: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """Chunks (begin, end, width) of the queries sorted by candidate count, from its histogram: counts below k
    and above MAX_CANDIDATES are left out; each chunk pads to its largest count and holds <= CHUNK_CANDIDATES
    pairs. A chunk also closes where a wider padding would cost its rows more than `_PAD_SLACK` times their
    candidates, once it is big enough that another chunk's launches cost less than that padding."""
    chunks = []
    pos = begin = int(hist[:k].sum())
    width = used = 0  # the open chunk's padding and its rows' candidates
    for t in np.flatnonzero(hist[k:MAX_CANDIDATES + 1]) + k:
        n, fit = int(hist[t]), max(1, CHUNK_CANDIDATES // int(t))
        while n:
            rows = pos - begin
            wasteful = rows * t > _PAD_SLACK * used and used >= CHUNK_CANDIDATES // 16
            if rows and (rows >= fit or wasteful):  # close the chunk
                chunks.append((begin, pos, width))
                begin, rows, used = pos, 0, 0
            take = min(n, fit - rows)
            pos, n, width, used = pos + take, n - take, int(t), used + take * int(t)
    if pos > begin:
        chunks.append((begin, pos, width))
    return chunks


def _cell_size(xyz: torch.Tensor, lo: torch.Tensor, target: float) -> float:
    """The cell size whose typical occupancy (the median over points of their cell's count: robust to a few
    crowded cells) is just at most `target`: start from the size uniform points would need, shrink while
    clustered points crowd the cells."""
    extent = (xyz.max(0).values - lo).double().cpu().numpy()
    if extent.max() <= 0:
        return 1.0  # all points coincide: one cell holds them
    floor = extent.max() / (1 << 20)  # keeps keys within int64 and float32 cell coordinates meaningful
    volume = float(np.prod(np.maximum(extent, extent.max() * 1e-3)))
    cell = max((volume * target / xyz.shape[0]) ** (1 / 3), floor)
    for _ in range(64):
        coords = torch.floor((xyz - lo) / cell).long()  # (N, 3)
        size = coords.max(0).values + 1
        keys = torch.sort((coords[:, 2] * size[1] + coords[:, 1]) * size[0] + coords[:, 0]).values
        counts = torch.sort(torch.unique_consecutive(keys, return_counts=True)[1]).values  # (cells,)
        median = float(counts[torch.searchsorted(counts.cumsum(0), xyz.shape[0] // 2)])
        if median <= target or cell <= floor:
            break
        # occupancy grows as cell^2 (points on a surface) to cell^3 (in a volume): a cube-root step stays above
        cell = max(cell * min((target / median) ** (1 / 3), 0.9), floor)
    return cell


def _build_tree(points: np.ndarray) -> cKDTree:
    return cKDTree(points, leafsize=16, balanced_tree=False, compact_nodes=False)
