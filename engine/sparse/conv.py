"""Submanifold sparse 3-D convolution (what spconv's `SubMConv3d` computes), by one neighbour gather + one matmul.

Shapes: N voxels, Ci / Co input / output channels, K kernel size (3 or 1), K3 = K^3 kernel offsets.

Weights use spconv's layout `(Co, K, K, K, Ci)` and live in a child module, so the parameter names are
`<name>.conv.weight` / `<name>.conv.bias` exactly as in the official checkpoints.

Orientation (measured against spconv, see the parity README): cross-correlation,
    out[p] = b + sum_{i,j,k} W[:, i, j, k, :] @ in[p + (i-1, j-1, k-1)]      (absent neighbours count as 0)
with (i, j, k) indexing (x, y, z). Output rows are the input rows (submanifold: same voxels, same order).

How: a neighbour table (N, K3) holds, per voxel and offset, the row of that neighbour, or N for an absent one,
which reads a zero row appended to the features. Gathering the table's rows gives (N, K3*Ci) with offsets
major and channels minor, which is exactly the weight's memory read as (Co, K3*Ci); so the whole conv is one
gather and one (N, K3*Ci) @ (K3*Ci, Co) product, done in row chunks of at most GATHER_CHUNK_ELEMENTS gathered
elements (the mesh decoder's 256^3 convs would otherwise gather tens of GiB). The table is cached per voxel set.
On a GPU, when Co <= Ci, the product comes first instead: (N+1, Ci) @ (Ci, K3*Co) gives every voxel's
contribution to each of its neighbours, and one gather-and-sum (`embedding_bag`) of the table's K3 rows per voxel
gives the output, moving K3*Co instead of K3*Ci values per voxel (stage 2's 2048 -> 128 conv moves 16x less).
At Co = Ci both move the same bytes, yet product-first takes about half the time (H200, stage 2's 128 -> 128
convs on 2 x 24,704 voxels: 0.95 -> 0.50 ms): `index_select` writes the gathered block more slowly than
`embedding_bag` reads the products.

Subdivided voxels (the mesh decoder's 128^3 and 256^3 convolutions) are whole bricks of their ancestor voxels; on
a GPU they go brick-wise through `conv3d` instead (`bricks.py`: each brick gathered once with a halo).

The 1x1x1 quirk: spconv evaluates a kernel-size-1 SubMConv3d as `x @ W.view(Ci, Co)`, i.e. it reinterprets
the memory of the stored (Co, 1, 1, 1, Ci) weight as a (Ci, Co) matrix (not a transpose). The official mesh
decoder's skip connections were trained that way, so we do the same.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .bricks import brick_conv3d
from .tensor import SparseTensor, coordinate_keys

# Upper bound on the elements of one gathered (rows, K3*Ci) block (256 MiB in bf16); more rows go in chunks.
GATHER_CHUNK_ELEMENTS = 1 << 27
# On the CPU a smaller bound (4 MiB in float32): a block that stays in cache is gathered several times faster
# than a fresh 100+ MiB one, whose page faults alone cost more than the matmul (measured, one thread).
CPU_GATHER_CHUNK_ELEMENTS = 1 << 20
# When Co <= Ci on a GPU, multiply first and gather-sum the (N+1, K3*Co) products instead (fewer bytes moved),
# if that block has at most this many elements (512 MiB in bf16). Not on the CPU, where it measured slower.
PRODUCT_FIRST_ELEMENTS = 1 << 28
CPU_PRODUCT_FIRST_ELEMENTS = 0
# Neighbour tables are looked up in a dense (B, X, Y, Z) grid of row numbers up to this many cells (256 MiB of
# int32, three padded 256^3 grids); larger bounding boxes fall back to a binary search.
DENSE_LOOKUP_CELLS = 1 << 26
# Devices on which convolutions of subdivided voxels run brick-wise through conv3d (`bricks.py`). Not the CPU,
# whose gather path is tuned to stay in cache.
BRICK_DEVICES = ("cuda",)


class SparseConv3d(nn.Module):
    """Submanifold convolution, stride 1, 'same' voxels. State dict: conv.weight (Co,K,K,K,Ci), conv.bias (Co)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"SparseConv3d supports kernel_size 1 or 3, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.conv = ConvWeights(in_channels, out_channels, kernel_size, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        weight, bias = self.conv.weight, self.conv.bias
        if x.feats.shape[-1] != self.in_channels:
            raise InputError(f"SparseConv3d expects {self.in_channels} input channels, got {x.feats.shape[-1]}")
        feats = x.feats.to(weight.dtype)  # (N, Ci)
        if self.kernel_size == 1:
            # spconv's 1x1 quirk: the (Co,1,1,1,Ci) memory read as a (Ci, Co) matrix.
            out = feats @ weight.contiguous().view(self.in_channels, self.out_channels)  # (N, Co)
            return x.replace(out if bias is None else out + bias)
        bricks = x.cache.get("bricks")  # subdivided voxels: whole bricks of an ancestor set (see bricks.py)
        if bricks is not None and feats.device.type in BRICK_DEVICES:
            ancestor_coords, ancestor_tables, levels = bricks
            table = _neighbour_table(ancestor_coords, ancestor_tables, 3)
            return x.replace(brick_conv3d(feats, table, levels, weight, bias))
        table = submanifold_neighbour_table(x, self.kernel_size)  # (N, K3) int32, N = absent
        n, taps = table.shape
        padded = torch.cat([feats, feats.new_zeros(1, self.in_channels)])  # (N+1, Ci); row N is the zero row
        cpu = feats.device.type == "cpu"
        if _product_first(n, taps, self.in_channels, self.out_channels, cpu):
            return x.replace(_matmul_then_gather_sum(padded, table, weight, bias))
        matrix = weight.reshape(self.out_channels, taps * self.in_channels).t()  # (K3*Ci, Co), a view
        bound = min(GATHER_CHUNK_ELEMENTS, CPU_GATHER_CHUNK_ELEMENTS) if cpu else GATHER_CHUNK_ELEMENTS
        rows_per_chunk = max(1, bound // (taps * self.in_channels))
        if n <= rows_per_chunk:
            return x.replace(_gather_matmul(padded, table, matrix, bias))
        out = feats.new_empty(n, self.out_channels)  # (N, Co)
        for start in range(0, n, rows_per_chunk):
            # Slice assignment (not `out=`) so autograd still sees every chunk when training.
            out[start:start + rows_per_chunk] = _gather_matmul(
                padded, table[start:start + rows_per_chunk], matrix, bias
            )
        return x.replace(out)


class ConvWeights(nn.Module):
    """Holds spconv-layout parameters: weight (Co, K, K, K, Ci), bias (Co)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)


def submanifold_neighbour_table(x: SparseTensor, kernel_size: int) -> torch.Tensor:
    """(N, K^3) int32: entry [p, o] is the row q with coords[q] = coords[p] + (i, j, k) - K//2 (same batch item)
    for the o-th offset (i, j, k) in weight order, or N where no voxel sits there. Cached on the voxel set."""
    return _neighbour_table(x.coords, x.cache, kernel_size)


def _neighbour_table(coords: torch.Tensor, cache: dict, kernel_size: int) -> torch.Tensor:
    key = ("submanifold_neighbour_table", kernel_size)
    if key not in cache:
        cache[key] = _build_table(coords, kernel_size)
    return cache[key]


def _product_first(n: int, taps: int, ci: int, co: int, cpu: bool) -> bool:
    """Whether a conv of n voxels runs product-first (see the module docstring)."""
    bound = CPU_PRODUCT_FIRST_ELEMENTS if cpu else PRODUCT_FIRST_ELEMENTS
    return co <= ci and (n + 1) * taps * co <= bound


def _gather_matmul(
    padded: torch.Tensor, table: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """padded (N+1, Ci), table (R, K3), matrix (K3*Ci, Co) -> (R, Co)."""
    gathered = padded.index_select(0, table.reshape(-1)).view(table.shape[0], matrix.shape[0])  # (R, K3*Ci)
    return gathered @ matrix if bias is None else torch.addmm(bias, gathered, matrix)


def _matmul_then_gather_sum(
    padded: torch.Tensor, table: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The same conv, product first: padded (N+1, Ci), table (N, K3), weight (Co, K, K, K, Ci) -> (N, Co)."""
    n, taps = table.shape
    co, ci = weight.shape[0], weight.shape[-1]
    per_tap = weight.reshape(co, taps, ci).permute(2, 1, 0).reshape(ci, taps * co)  # (Ci, K3*Co)
    products = (padded @ per_tap).view(-1, co)  # ((N+1)*K3, Co): row q*K3 + k = W_k @ in[q]; zero for q = N
    rows = table * taps + torch.arange(taps, dtype=table.dtype, device=table.device)  # (N, K3) rows of products
    out = F.embedding_bag(rows, products, mode="sum")  # (N, Co): one gather-and-sum, float32 accumulation inside
    return out if bias is None else out + bias


def _build_table(coords: torch.Tensor, kernel_size: int) -> torch.Tensor:
    n = coords.shape[0]
    radius = kernel_size // 2
    if n == 0:
        return torch.zeros((0, kernel_size**3), dtype=torch.int32, device=coords.device)
    lo = coords.min(dim=0).values.tolist()
    if min(lo) < 0:
        raise InputError("sparse coordinates must be non-negative (batch, x, y, z); shift them into the grid")
    hi = coords.max(dim=0).values.tolist()
    # Pad every spatial axis by `radius` on both sides so neighbour keys never wrap into another row/batch.
    extent = [hi[0] + 1] + [h + 1 + 2 * radius for h in hi[1:]]
    padded = coords.long()
    padded = torch.cat([padded[:, :1], padded[:, 1:] + radius], dim=1)  # (N, 4)
    keys = coordinate_keys(padded, extent)  # (N,) int64
    deltas = [((i - radius) * extent[2] + (j - radius)) * extent[3] + (k - radius)
              for i, j, k in itertools.product(range(kernel_size), repeat=3)]
    cells = math.prod(extent)
    if cells <= DENSE_LOOKUP_CELLS:
        # A dense grid of row numbers (N = empty): each neighbour is one read, 3-10x faster than a search.
        grid = torch.full((cells,), n, dtype=torch.int32, device=coords.device)
        grid[keys] = torch.arange(n, dtype=torch.int32, device=coords.device)
        steps = torch.tensor(deltas, dtype=torch.int32, device=coords.device)  # (K3,)
        where = keys.int()[:, None] + steps  # (N, K3) cell of every neighbour; int32 as cells <= 2^26
        return grid.index_select(0, where.view(-1)).view(n, len(deltas))
    # A large, sparse bounding box: binary search in the sorted keys, with sorted queries (cache-friendly).
    sorted_keys, order = torch.sort(keys)
    sorted_rows = order.int()
    by_sorted = torch.empty((n, len(deltas)), dtype=torch.int32, device=coords.device)  # (N, K3) in key order
    for offset, delta in enumerate(deltas):
        query = sorted_keys + delta  # (N,) sorted
        pos = torch.searchsorted(sorted_keys, query).clamp_(max=n - 1)
        by_sorted[:, offset] = torch.where(sorted_keys[pos] == query, sorted_rows[pos], n)
    table = torch.empty_like(by_sorted)
    table[order] = by_sorted
    return table
