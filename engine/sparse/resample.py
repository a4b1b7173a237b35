"""Changing resolution: 2x down-sampling (mean pool), up-sampling back to the cached fine voxels, subdivision.

Shapes: N fine voxels, M coarse voxels, C channels.

* `downsample(x, f)`: coarse voxel = coords // f per spatial axis; its feature is the sum of its occupied
  children divided by (their count + 1). Quirk, measured against the official code: upstream averages with
  `scatter_reduce(zeros, reduce="mean")`, whose default `include_self=True` counts the zero it starts from as
  one more member (a coarse voxel with 3 children gets their sum / 4). The trained SLAT flow expects it.
  Coarse voxels are sorted lexicographically by (batch, x, y, z). The coarse tensor remembers the fine voxels,
  so `upsample` can undo the voxel change.
* `upsample(x, f)`: only for tensors made by `downsample(·, f)` (or `replace` of one): every fine voxel gets
  its parent's feature, fine voxels in their original order, with the fine tensor's cache.
* `subdivide(x)`: every voxel becomes 8 children at 2c + (dx, dy, dz), parent-major, children in the order
  (0,0,0), (0,0,1), (0,1,0), (0,1,1), (1,0,0), ... (dz fastest); features copied.
All maps are cached on the voxel set, so repeated calls (sampler steps, h and skip) cost a gather.
"""
from __future__ import annotations

import itertools

import torch

from ..errors import InputError
from .tensor import SparseTensor, coordinate_keys, keys_to_coordinates


def downsample(x: SparseTensor, factor: int = 2) -> SparseTensor:
    """(N, C) at resolution R -> (M, C) at R / factor: sum of occupied children / (count + 1), see above."""
    coarse_coords, parent, counts, coarse_cache = x.cached(
        ("downsample", factor), lambda: _downsample_plan(x, factor)
    )
    sums = torch.zeros(coarse_coords.shape[0], x.channels, dtype=torch.float32, device=x.device)
    sums.index_add_(0, parent, x.feats.float())  # (M, C)
    feats = (sums / (counts[:, None] + 1)).to(x.dtype)  # + 1: upstream's include_self quirk
    return SparseTensor(coarse_coords, feats, coarse_cache)


def upsample(x: SparseTensor, factor: int = 2) -> SparseTensor:
    """(M, C) coarse -> (N, C) on the fine voxels `downsample` started from (their order and cache)."""
    entry = x.cache.get(("upsample", factor))
    if entry is None:
        raise InputError(
            f"upsample({factor}) needs a tensor produced by downsample({factor}) (or replace() of one); "
            "this one has no cached fine voxels"
        )
    fine_coords, parent, fine_cache = entry
    return SparseTensor(fine_coords, x.feats.index_select(0, parent), fine_cache)


def subdivide(x: SparseTensor) -> SparseTensor:
    """(N, C) at resolution R -> (8N, C) at 2R: row 8p + c is child c of voxel p (see module docstring).

    The fine voxels remember that they are whole bricks of an ancestor voxel set (cache entry "bricks":
    (ancestor coords, a cache for its tables, subdivisions since)), which `conv.SparseConv3d` uses (`bricks.py`)."""
    fine_coords, fine_cache = x.cached("subdivide", lambda: (_subdivided_coords(x.coords), _brick_cache(x)))
    n, c = x.feats.shape
    feats = x.feats[:, None].expand(n, 8, c).reshape(n * 8, c)  # (N, 8, C) -> (8N, C)
    return SparseTensor(fine_coords, feats, fine_cache)


def _downsample_plan(x: SparseTensor, factor: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """coarse coords (M, 4) lexicographic, parent of every fine voxel (N,), children per coarse voxel (M,) float32,
    and the coarse voxels' new cache (holding the way back for `upsample`)."""
    coords = x.coords
    coarse = torch.cat([coords[:, :1], torch.div(coords[:, 1:], factor, rounding_mode="floor")], dim=1)
    extent = [int(v) + 1 for v in coarse.max(dim=0).values.tolist()]
    keys = coordinate_keys(coarse, extent)  # (N,)
    unique_keys, parent, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    coarse_coords = keys_to_coordinates(unique_keys, extent)  # (M, 4) lexicographic
    coarse_cache = {("upsample", factor): (coords, parent, x.cache)}
    return coarse_coords, parent, counts.to(torch.float32), coarse_cache


def _brick_cache(x: SparseTensor) -> dict:
    # The ancestor's tables go in a dict of their own: holding the ancestor's cache (which holds this one) would
    # make a reference cycle, and GPU memory in a cycle waits for the garbage collector.
    ancestor_coords, ancestor_tables, levels = x.cache.get("bricks", (x.coords, {}, 0))
    return {"bricks": (ancestor_coords, ancestor_tables, levels + 1)}


def _subdivided_coords(coords: torch.Tensor) -> torch.Tensor:
    children = torch.tensor(list(itertools.product((0, 1), repeat=3)), dtype=torch.int32, device=coords.device)
    xyz = coords[:, None, 1:] * 2 + children[None]  # (N, 8, 3)
    batch = coords[:, None, :1].expand(-1, 8, 1)  # (N, 8, 1)
    return torch.cat([batch, xyz], dim=2).reshape(-1, 4)  # (8N, 4)
