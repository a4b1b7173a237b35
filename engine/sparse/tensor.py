"""SparseTensor: voxel coordinates, one feature row per voxel, and a cache keyed on the coordinates.

Shapes: N voxels, C channels. Coordinates are rows (batch, x, y, z), int32, non-negative, unique; rows may be
in any order (operators keep it: output row i belongs to input row i unless an operator says otherwise).

The cache is a plain dict shared by every tensor made with `replace(feats)`: anything computed from the
coordinates alone (neighbour maps, window partitions, down/up-sampling maps) is computed once per voxel set.
Make new tensors from old ones with `replace` so the cache travels with them; `SparseTensor(coords, feats)`
starts an empty one.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import InputError


class SparseTensor:
    __slots__ = ("coords", "feats", "cache")

    def __init__(self, coords: torch.Tensor, feats: torch.Tensor, cache: dict[Any, Any] | None = None):
        if coords.ndim != 2 or coords.shape[1] != 4 or coords.dtype != torch.int32:
            raise InputError(
                f"SparseTensor coords must be an (N, 4) int32 tensor of (batch, x, y, z) rows, got "
                f"{tuple(coords.shape)} {coords.dtype}"
            )
        if feats.ndim < 1 or feats.shape[0] != coords.shape[0]:
            raise InputError(
                f"SparseTensor feats must have one row per voxel: {coords.shape[0]} coords but feats "
                f"{tuple(feats.shape)}"
            )
        if feats.device != coords.device:
            raise InputError(f"SparseTensor coords are on {coords.device} but feats on {feats.device}; move both")
        self.coords = coords  # (N, 4) int32 [batch, x, y, z]
        self.feats = feats  # (N, C)
        self.cache: dict[Any, Any] = {} if cache is None else cache

    def replace(self, feats: torch.Tensor) -> SparseTensor:
        """Same voxels (and cache), new features (N, C')."""
        return SparseTensor(self.coords, feats, self.cache)

    @property
    def num_voxels(self) -> int:
        return self.coords.shape[0]

    @property
    def channels(self) -> int:
        return self.feats.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def batch_index(self) -> torch.Tensor:
        """(N,) int64 batch item of every voxel."""
        return self.cached("batch_index", lambda: self.coords[:, 0].long())

    @property
    def batch_size(self) -> int:
        """Number of batch items = 1 + the largest batch index (one device sync, then cached)."""
        return self.cached("batch_size", lambda: int(self.coords[:, 0].max()) + 1 if self.num_voxels else 0)

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """The cache entry `key`, built by `build()` the first time it is asked for."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    def __repr__(self) -> str:
        return f"SparseTensor(voxels={self.num_voxels}, feats={tuple(self.feats.shape)}, {self.dtype})"


def coordinate_keys(coords: torch.Tensor, extent: list[int]) -> torch.Tensor:
    """(N, 4) non-negative integer rows -> (N,) int64 keys whose order is the lexicographic row order.

    extent[a] is an exclusive upper bound of column a (the batch column included).
    """
    c = coords.long()
    key = c[:, 0]
    for axis in range(1, 4):
        key = key * extent[axis] + c[:, axis]
    return key


def keys_to_coordinates(keys: torch.Tensor, extent: list[int]) -> torch.Tensor:
    """Inverse of `coordinate_keys`: (N,) int64 -> (N, 4) int32."""
    cols = []
    rest = keys
    for axis in (3, 2, 1):
        cols.append(rest % extent[axis])
        rest = rest // extent[axis]
    cols.append(rest)
    return torch.stack(cols[::-1], dim=1).int()
