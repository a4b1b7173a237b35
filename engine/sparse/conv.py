"""Submanifold sparse 3-D convolution (what spconv's `SubMConv3d` computes), by neighbour gather + matmul.

Shapes: N voxels, Ci / Co input / output channels, K kernel size (3 or 1), K3 = K^3 kernel offsets.

Weights use spconv's layout `(Co, K, K, K, Ci)` and live in a child module, so the parameter names are
`<name>.conv.weight` / `<name>.conv.bias` exactly as in the official checkpoints.

Orientation (measured against spconv, see the parity README): cross-correlation,
    out[p] = b + sum_{i,j,k} W[:, i, j, k, :] @ in[p + (i-1, j-1, k-1)]      (absent neighbours count as 0)
with (i, j, k) indexing (x, y, z). Output rows are the input rows (submanifold: same voxels, same order).

The 1x1x1 quirk: spconv evaluates a kernel-size-1 SubMConv3d as `x @ W.view(Ci, Co)`, i.e. it reinterprets
the memory of the stored (Co, 1, 1, 1, Ci) weight as a (Ci, Co) matrix (not a transpose). The official mesh
decoder's skip connections were trained that way, so we do the same.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from ..errors import InputError
from .tensor import SparseTensor, coordinate_keys

# Upper bound on the elements of one gathered (rows, Ci) block; bigger neighbour lists are done in chunks.
GATHER_CHUNK_ELEMENTS = 1 << 27


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
        feats = x.feats.to(weight.dtype)  # (N, Ci)
        if feats.shape[-1] != self.in_channels:
            raise InputError(f"SparseConv3d expects {self.in_channels} input channels, got {feats.shape[-1]}")
        if self.kernel_size == 1:
            # spconv's 1x1 quirk: the (Co,1,1,1,Ci) memory read as a (Ci, Co) matrix.
            out = feats @ weight.contiguous().view(self.in_channels, self.out_channels)  # (N, Co)
            return x.replace(out if bias is None else out + bias)
        kernels = weight.reshape(self.out_channels, -1, self.in_channels)  # (Co, K3, Ci)
        pairs = submanifold_neighbours(x, self.kernel_size)
        centre = len(pairs) // 2
        out = (feats @ kernels[:, centre].t()).float()  # (N, Co) float32 accumulator; centre = every voxel itself
        rows_per_chunk = max(1, GATHER_CHUNK_ELEMENTS // max(1, self.in_channels))
        for offset, (src, dst) in enumerate(pairs):
            if offset == centre or src.numel() == 0:
                continue
            kernel_t = kernels[:, offset].t()  # (Ci, Co)
            for start in range(0, src.numel(), rows_per_chunk):
                s, d = src[start:start + rows_per_chunk], dst[start:start + rows_per_chunk]
                out.index_add_(0, d, (feats.index_select(0, s) @ kernel_t).float())
        if bias is not None:
            out = out + bias.float()
        return x.replace(out.to(weight.dtype))


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


def submanifold_neighbours(x: SparseTensor, kernel_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each of the K^3 kernel offsets (i, j, k) in weight order, the pairs (src, dst) of int32 row indices
    with coords[src] = coords[dst] + (i, j, k) - K//2 (same batch item). Cached on the voxel set."""
    return x.cached(("submanifold_neighbours", kernel_size), lambda: _build_neighbours(x.coords, kernel_size))


def _build_neighbours(coords: torch.Tensor, kernel_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n = coords.shape[0]
    radius = kernel_size // 2
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int32, device=coords.device)
        return [(empty, empty)] * kernel_size**3
    lo = coords.min(dim=0).values.tolist()
    if min(lo) < 0:
        raise InputError("sparse coordinates must be non-negative (batch, x, y, z); shift them into the grid")
    hi = coords.max(dim=0).values.tolist()
    # Pad every spatial axis by `radius` on both sides so neighbour keys never wrap into another row/batch.
    extent = [hi[0] + 1] + [h + 1 + 2 * radius for h in hi[1:]]
    padded = coords.long()
    padded = torch.cat([padded[:, :1], padded[:, 1:] + radius], dim=1)  # (N, 4)
    keys = coordinate_keys(padded, extent)  # (N,) int64
    sorted_keys, order = torch.sort(keys)
    rows = torch.arange(n, device=coords.device, dtype=torch.int32)
    pairs = []
    for i, j, k in itertools.product(range(kernel_size), repeat=3):
        di, dj, dk = i - radius, j - radius, k - radius
        if di == dj == dk == 0:
            pairs.append((rows, rows))
            continue
        delta = (di * extent[2] + dj) * extent[3] + dk
        query = keys + delta  # (N,)
        pos = torch.searchsorted(sorted_keys, query).clamp_(max=n - 1)
        found = sorted_keys[pos] == query
        dst = found.nonzero().squeeze(1)
        src = order[pos[dst]]
        pairs.append((src.int(), dst.int()))
    return pairs
