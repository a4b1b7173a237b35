"""Windowed (swin), per-item full and cross attention over voxels against brute-force references."""
from __future__ import annotations

import math

import pytest
import torch

from engine.sparse.attention import full_attention, full_cross_attention, windowed_attention
from engine.sparse.tensor import SparseTensor
from tests.engine.parity import assert_close
from tests.engine.sparse.random_voxels import random_coords

H, D = 2, 4


def _qkv(gen: torch.Generator, n: int) -> list[torch.Tensor]:
    return [torch.randn(n, H, D, generator=gen) for _ in range(3)]


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(L, H, D), (S, H, D) -> (L, H*D), explicit softmax."""
    w = torch.einsum("lhd,shd->hls", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("hls,shd->lhd", w.softmax(-1), v).reshape(q.shape[0], -1)


@pytest.mark.parametrize("window,shift", [(4, 0), (4, 2), (3, 1), (8, 4)])
def test_windowed_attention_equals_a_brute_force_loop_over_windows(window, shift):
    gen = torch.Generator().manual_seed(window * 10 + shift)
    grid = 10  # not a multiple of the window: partial windows at the border, no wrap-around
    coords = random_coords(gen, 300, grid, batches=2)
    q, k, v = _qkv(gen, 300)
    x = SparseTensor(coords, torch.zeros(300, 1))
    out = windowed_attention(q, k, v, x, window, shift)

    cells = torch.cat([coords[:, :1], (coords[:, 1:] + shift) // window], dim=1)
    expected = torch.empty(300, H * D)
    for cell in torch.unique(cells, dim=0):
        members = (cells == cell).all(dim=1).nonzero().squeeze(1)
        expected[members] = _softmax_attention(q[members], k[members], v[members])
    assert_close(out, expected, 1e-5, 1e-5, f"window {window} shift {shift}")
    assert ("windows", window, shift) in x.cache


def test_voxels_on_opposite_borders_do_not_share_a_shifted_window():
    coords = torch.tensor([[0, 0, 0, 0], [0, 7, 7, 7], [0, 6, 7, 7]], dtype=torch.int32)
    gen = torch.Generator().manual_seed(1)
    q, k, v = _qkv(gen, 3)
    out = windowed_attention(q, k, v, SparseTensor(coords, torch.zeros(3, 1)), window=8, shift=4)
    assert_close(out[0], v[0].reshape(-1), 1e-6, 1e-6, "voxel alone in its window attends only to itself")
    assert_close(out[1:], _softmax_attention(q[1:], k[1:], v[1:]), 1e-5, 1e-5, "the two border voxels")


@pytest.mark.parametrize("sizes", [(37, 37), (20, 45), (50,)])
def test_full_and_cross_attention_stay_inside_each_batch_item(sizes):
    gen = torch.Generator().manual_seed(sum(sizes))
    coords = torch.cat([random_coords(gen, n, 6, 1) + torch.tensor([b, 0, 0, 0], dtype=torch.int32)
                        for b, n in enumerate(sizes)])
    order = torch.randperm(coords.shape[0], generator=gen)
    coords = coords[order]  # rows of different items interleaved
    n = coords.shape[0]
    x = SparseTensor(coords, torch.zeros(n, 1))
    q, k, v = _qkv(gen, n)
    ck, cv = torch.randn(len(sizes), 9, H, D, generator=gen), torch.randn(len(sizes), 9, H, D, generator=gen)
    out_self = full_attention(q, k, v, x)
    out_cross = full_cross_attention(q, ck, cv, x)
    for b in range(len(sizes)):
        rows = (coords[:, 0] == b).nonzero().squeeze(1)
        assert_close(out_self[rows], _softmax_attention(q[rows], k[rows], v[rows]), 1e-5, 1e-5, f"self item {b}")
        assert_close(out_cross[rows], _softmax_attention(q[rows], ck[b], cv[b]), 1e-5, 1e-5, f"cross item {b}")
