"""Brick-wise convolution of subdivided voxels (conv3d over bricks with a halo) against the neighbour-gather conv."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from engine.sparse import bricks, conv
from engine.sparse.conv import SparseConv3d
from engine.sparse.resample import subdivide
from engine.sparse.tensor import SparseTensor
from tests.engine.sparse.random_voxels import random_coords


@pytest.mark.parametrize("levels", [1, 2])
def test_brick_conv_equals_the_gather_conv_on_subdivided_voxels(levels, monkeypatch):
    gen = torch.Generator().manual_seed(71 + levels)
    coarse = SparseTensor(random_coords(gen, 150, 7, batches=2), torch.randn(150, 3, generator=gen))
    fine = coarse
    for _ in range(levels):
        fine = subdivide(fine)
    fine = fine.replace(torch.randn(fine.num_voxels, 6, generator=gen))
    layer = SparseConv3d(6, 5, 3)
    with torch.no_grad():
        layer.conv.weight.normal_(generator=gen)
        layer.conv.bias.normal_(generator=gen)
        expected = layer(fine).feats
        monkeypatch.setattr(conv, "BRICK_DEVICES", ("cpu",))
        monkeypatch.setattr(bricks, "CHUNK_ELEMENTS", 4000)  # several chunks
        got = layer(fine).feats
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_brick_cache_holds_no_reference_cycle():
    gen = torch.Generator().manual_seed(73)
    coarse = SparseTensor(random_coords(gen, 40, 5), torch.randn(40, 4, generator=gen))
    fine = subdivide(subdivide(coarse))
    _, tables, levels = fine.cache["bricks"]
    assert levels == 2
    table = conv._neighbour_table(coarse.coords, tables, 3)
    gone = weakref.ref(table)
    gc.disable()
    try:
        del coarse, fine, tables, table
        assert gone() is None  # freed by reference counts alone, as GPU memory must be
    finally:
        gc.enable()
