"""Down-sampling (upstream's mean with the include_self quirk), up-sampling back, subdivision."""
from __future__ import annotations

import itertools

import pytest
import torch

from engine.errors import InputError
from engine.sparse.resample import downsample, subdivide, upsample
from engine.sparse.tensor import SparseTensor
from tests.engine.parity import assert_close
from tests.engine.sparse.random_voxels import random_coords


def _random_voxels(seed: int, n: int = 90, grid: int = 8, batches: int = 2, channels: int = 3) -> SparseTensor:
    gen = torch.Generator().manual_seed(seed)
    coords = random_coords(gen, n, grid, batches)
    return SparseTensor(coords, torch.randn(n, channels, generator=gen))


def test_downsample_sums_children_over_count_plus_one_on_sorted_coarse_voxels():
    x = _random_voxels(1)
    y = downsample(x, 2)
    parents = torch.cat([x.coords[:, :1], x.coords[:, 1:] // 2], dim=1)
    expected_coords = torch.unique(parents, dim=0)  # lexicographic
    assert torch.equal(y.coords, expected_coords)
    for i, c in enumerate(expected_coords):
        members = (parents == c).all(dim=1)
        expected = x.feats[members].sum(0) / (members.sum() + 1)  # upstream's scatter_reduce(mean, include_self)
        assert_close(y.feats[i], expected, 1e-6, 1e-6, f"coarse voxel {c.tolist()}")


def test_upsample_restores_fine_voxels_order_and_cache():
    x = _random_voxels(2)
    y = downsample(x, 2)
    z = upsample(y.replace(y.feats * 2), 2)
    assert z.coords is x.coords and z.cache is x.cache
    parents = torch.cat([x.coords[:, :1], x.coords[:, 1:] // 2], dim=1)
    index = [(y.coords == p).all(dim=1).nonzero().item() for p in parents]
    assert_close(z.feats, y.feats[index] * 2, 0, 0, "parent features")


def test_downsample_plan_is_cached_and_upsample_needs_one():
    x = _random_voxels(3)
    a, b = downsample(x, 2), downsample(x.replace(x.feats + 1), 2)
    assert a.coords is b.coords and a.cache is b.cache
    with pytest.raises(InputError):
        upsample(x, 2)


def test_subdivide_emits_eight_children_per_parent_in_dz_fastest_order():
    x = _random_voxels(4, n=10)
    y = subdivide(x)
    assert y.coords.shape == (80, 4) and y.feats.shape == (80, 3)
    offsets = list(itertools.product((0, 1), repeat=3))
    for p in range(10):
        for c, (dx, dy, dz) in enumerate(offsets):
            row = 8 * p + c
            b, px, py, pz = x.coords[p].tolist()
            assert y.coords[row].tolist() == [b, 2 * px + dx, 2 * py + dy, 2 * pz + dz]
            assert torch.equal(y.feats[row], x.feats[p])
    assert subdivide(x.replace(x.feats * 0 + 1)).coords is y.coords
