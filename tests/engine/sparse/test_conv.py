"""Submanifold sparse convolution against spconv (parity spconv_subm3d) and a dense conv3d."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.sparse.conv import SparseConv3d, submanifold_neighbour_table
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


def _dense_reference(conv: SparseConv3d, coords: torch.Tensor, feats: torch.Tensor, grid: int) -> torch.Tensor:
    """Scatter the voxels into a dense grid, run F.conv3d with the weight permuted to (Co, Ci, K, K, K), read the
    active sites back: (N, Co). Kernel 1 uses spconv's quirk matrix (the weight memory read as (Ci, Co))."""
    w = conv.conv.weight.detach()
    co, ci, k = conv.out_channels, conv.in_channels, conv.kernel_size
    dense_w = w.permute(0, 4, 1, 2, 3) if k == 3 else w.reshape(-1).view(ci, co).t().reshape(co, ci, 1, 1, 1)
    b, x, y, z = coords.long().unbind(1)
    dense = torch.zeros(int(b.max()) + 1, ci, grid, grid, grid, dtype=feats.dtype)
    dense[b, :, x, y, z] = feats
    out = F.conv3d(dense, dense_w, conv.conv.bias.detach(), padding=k // 2)
    return out[b, :, x, y, z]


@pytest.mark.parametrize("kernel_size,cin,cout,batches", [
    (3, 3, 4, 1), (3, 3, 4, 2), (3, 8, 16, 2), (3, 16, 5, 1), (3, 24, 7, 2), (3, 9, 9, 2), (1, 6, 10, 2),
    (1, 12, 4, 1),
])
@pytest.mark.parametrize("chunk_elements,product_first", [(None, False), (250, False), (None, True)])
def test_equals_a_dense_conv3d_read_at_the_active_sites(monkeypatch, kernel_size, cin, cout, batches,
                                                        chunk_elements, product_first):
    gen = torch.Generator().manual_seed(100 * kernel_size + 10 * cin + cout + batches)
    grid = 7
    coords = random_coords(gen, 150 * batches, grid, batches)
    feats = torch.randn(coords.shape[0], cin, generator=gen)
    conv = SparseConv3d(cin, cout, kernel_size)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.randn(cout, kernel_size, kernel_size, kernel_size, cin, generator=gen))
        conv.conv.bias.copy_(torch.randn(cout, generator=gen))
        if chunk_elements is not None:  # 250 elements: 1-2 rows of 27*Ci per chunk, so hundreds of chunks
            monkeypatch.setattr("engine.sparse.conv.GATHER_CHUNK_ELEMENTS", chunk_elements)
        if product_first:  # the GPU's product-first order, used when Co <= Ci
            monkeypatch.setattr("engine.sparse.conv.CPU_PRODUCT_FIRST_ELEMENTS", 1 << 30)
        out = conv(SparseTensor(coords, feats)).feats
        ref = _dense_reference(conv, coords, feats, grid)
    assert_close(out, ref, atol=1e-5, rtol=1e-5, what="sparse vs dense conv")


def test_product_first_is_the_gpus_order_for_convs_that_keep_or_narrow_the_channels():
    from engine.sparse.conv import PRODUCT_FIRST_ELEMENTS, _product_first

    assert _product_first(49_408, 27, 128, 128, cpu=False)  # stage 2's 128 -> 128 convs
    assert _product_first(49_408, 27, 2048, 128, cpu=False)
    assert not _product_first(12_384, 27, 1024, 1024 + 1, cpu=False)  # widening: gather, then one product
    assert not _product_first(PRODUCT_FIRST_ELEMENTS // 27, 27, 128, 128, cpu=False)  # products over the bound
    assert not _product_first(49_408, 27, 128, 128, cpu=True)  # the CPU gathers (tuned to stay in cache)


def test_neighbour_table_is_built_once_per_voxel_set_and_shared_by_replace():
    gen = torch.Generator().manual_seed(5)
    coords = random_coords(gen, 50, grid=6, batches=1)
    x = SparseTensor(coords, torch.randn(50, 2, generator=gen))
    conv = SparseConv3d(2, 2, 3)
    with torch.no_grad():
        first = conv(x)
        table = x.cache[("submanifold_neighbour_table", 3)]
        second = conv(first.replace(torch.randn(50, 2, generator=gen)))
    assert second.cache is x.cache
    assert x.cache[("submanifold_neighbour_table", 3)] is table


def test_neighbour_table_points_at_the_offset_voxel_or_the_zero_row():
    gen = torch.Generator().manual_seed(11)
    coords = random_coords(gen, 90, grid=5, batches=2)
    table = submanifold_neighbour_table(SparseTensor(coords, torch.randn(90, 1, generator=gen)), 3)
    assert table.shape == (90, 27) and table.dtype == torch.int32
    where = {tuple(c): row for row, c in enumerate(coords.tolist())}
    offsets = [(i - 1, j - 1, k - 1) for i in range(3) for j in range(3) for k in range(3)]
    for p, (b, x, y, z) in enumerate(coords.tolist()):
        expected = [where.get((b, x + i, y + j, z + k), 90) for i, j, k in offsets]
        assert table[p].tolist() == expected, f"row {p}"
    assert (table == 90).any() and (table < 90).any()


@pytest.mark.parametrize("setting,value", [("GATHER_CHUNK_ELEMENTS", 7), ("CPU_PRODUCT_FIRST_ELEMENTS", 1 << 30)])
def test_chunked_and_product_first_convs_give_the_same_gradients(monkeypatch, setting, value):
    gen = torch.Generator().manual_seed(9)
    coords = random_coords(gen, 80, grid=5, batches=1)
    feats = torch.randn(80, 3, generator=gen)
    upstream = torch.randn(80, 2, generator=gen)
    conv = SparseConv3d(3, 2, 3)

    def grads():
        conv.zero_grad()
        f = feats.clone().requires_grad_()
        (conv(SparseTensor(coords, f)).feats * upstream).sum().backward()
        return f.grad, conv.conv.weight.grad.clone(), conv.conv.bias.grad.clone()

    whole = grads()
    monkeypatch.setattr(f"engine.sparse.conv.{setting}", value)  # one row per chunk / product first (Co < Ci)
    other = grads()
    for name, a, b in zip(("feats", "weight", "bias"), other, whole):
        assert_close(a, b, 1e-5, 1e-5, f"{name} grad")
    assert whole[0].abs().sum() > 0


def test_an_empty_voxel_set_gives_an_empty_output():
    conv = SparseConv3d(4, 3, 3)
    x = SparseTensor(torch.zeros(0, 4, dtype=torch.int32), torch.zeros(0, 4))
    with torch.no_grad():
        out = conv(x)
    assert out.feats.shape == (0, 3)


def test_neighbour_table_by_search_equals_the_dense_lookup(monkeypatch):
    gen = torch.Generator().manual_seed(13)
    coords = random_coords(gen, 300, grid=9, batches=3)
    dense = submanifold_neighbour_table(SparseTensor(coords, torch.randn(300, 1, generator=gen)), 3)
    monkeypatch.setattr("engine.sparse.conv.DENSE_LOOKUP_CELLS", 0)  # force the binary-search path
    searched = submanifold_neighbour_table(SparseTensor(coords, torch.randn(300, 1, generator=gen)), 3)
    assert torch.equal(searched, dense)
    assert (dense == 300).any() and (dense < 300).any()
