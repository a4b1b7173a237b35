"""Submanifold sparse convolution against spconv (parity spconv_subm3d) and a dense conv3d."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.sparse.conv import SparseConv3d
from engine.sparse.tensor import SparseTensor
from tests.engine.parity import assert_close, load_case
from tests.engine.sparse.random_voxels import random_coords


@pytest.fixture(scope="module")
def case():
    return load_case("spconv_subm3d")


@pytest.mark.parametrize("name,kernel_size", [("k3", 3), ("k1", 1)])
def test_matches_spconv_for_3x3x3_and_the_1x1x1_quirk(case, name, kernel_size):
    conv = SparseConv3d(6, 5, kernel_size)
    conv.load_state_dict({k.removeprefix(f"{name}."): v for k, v in case.params.items() if k.startswith(f"{name}.")},
                         strict=True)
    x = SparseTensor(case.inputs["coords"], case.inputs["feats"])
    with torch.no_grad():
        out = conv(x)
    assert_close(out.feats, case.outputs[f"{name}.feats"], atol=1e-5, rtol=1e-5, what=f"{name}.feats")
    assert out.coords is x.coords


def test_1x1x1_reads_the_weight_memory_as_in_by_out_not_a_transpose():
    gen = torch.Generator().manual_seed(3)
    conv = SparseConv3d(4, 6, 1)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.randn(6, 1, 1, 1, 4, generator=gen))
        conv.conv.bias.copy_(torch.randn(6, generator=gen))
    coords = random_coords(gen, 30, grid=5, batches=1)
    feats = torch.randn(30, 4, generator=gen)
    with torch.no_grad():
        out = conv(SparseTensor(coords, feats)).feats
    w = conv.conv.weight.detach()
    assert_close(out, feats @ w.reshape(-1).view(4, 6) + conv.conv.bias.detach(), 1e-6, 1e-6, "1x1 quirk")
    assert (out - (feats @ w.reshape(6, 4).t() + conv.conv.bias.detach())).abs().max() > 1e-2


@pytest.mark.parametrize("batches", [1, 2])
def test_equals_a_dense_conv3d_read_at_the_active_sites(batches):
    gen = torch.Generator().manual_seed(7 + batches)
    grid, cin, cout = 7, 3, 4
    coords = random_coords(gen, 120 * batches, grid, batches)
    feats = torch.randn(coords.shape[0], cin, generator=gen)
    conv = SparseConv3d(cin, cout, 3)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.randn(cout, 3, 3, 3, cin, generator=gen))
        conv.conv.bias.copy_(torch.randn(cout, generator=gen))
        out = conv(SparseTensor(coords, feats)).feats
        dense = torch.zeros(batches, cin, grid, grid, grid)
        b, x, y, z = coords.long().unbind(1)
        dense[b, :, x, y, z] = feats
        ref = F.conv3d(dense, conv.conv.weight.permute(0, 4, 1, 2, 3), conv.conv.bias, padding=1)
    assert_close(out, ref[b, :, x, y, z], atol=1e-5, rtol=1e-5, what="sparse vs dense conv")


def test_neighbour_map_is_built_once_per_voxel_set_and_shared_by_replace():
    gen = torch.Generator().manual_seed(5)
    coords = random_coords(gen, 50, grid=6, batches=1)
    x = SparseTensor(coords, torch.randn(50, 2, generator=gen))
    conv = SparseConv3d(2, 2, 3)
    with torch.no_grad():
        first = conv(x)
        maps = x.cache[("submanifold_neighbours", 3)]
        second = conv(first.replace(torch.randn(50, 2, generator=gen)))
    assert second.cache is x.cache
    assert x.cache[("submanifold_neighbours", 3)] is maps


def test_chunked_gather_gives_the_same_result(monkeypatch):
    gen = torch.Generator().manual_seed(9)
    coords = random_coords(gen, 80, grid=5, batches=1)
    x = SparseTensor(coords, torch.randn(80, 3, generator=gen))
    conv = SparseConv3d(3, 2, 3)
    with torch.no_grad():
        whole = conv(x).feats
        monkeypatch.setattr("engine.sparse.conv.GATHER_CHUNK_ELEMENTS", 7)
        chunked = conv(x).feats
    assert_close(chunked, whole, 1e-6, 1e-6, "chunked")
