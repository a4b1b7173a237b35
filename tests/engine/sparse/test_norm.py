"""Sparse GroupNorm: per batch item, like a dense GroupNorm over that item's (1, C, N_b) features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.sparse.norm import SparseGroupNorm
from engine.sparse.tensor import SparseTensor
from tests.engine.parity import assert_close


def test_group_norm_statistics_run_over_each_batch_item_separately():
    gen = torch.Generator().manual_seed(2)
    n0, n1, c, groups = 30, 17, 8, 4
    coords = torch.cat([
        torch.stack([torch.zeros(n0), torch.arange(n0), torch.zeros(n0), torch.zeros(n0)], 1),
        torch.stack([torch.ones(n1), torch.arange(n1), torch.ones(n1), torch.zeros(n1)], 1),
    ]).int()
    order = torch.randperm(n0 + n1, generator=gen)
    coords = coords[order]
    feats = torch.randn(n0 + n1, c, generator=gen) * 3 + torch.randn(c, generator=gen)
    norm = SparseGroupNorm(groups, c)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(c, generator=gen))
        norm.bias.copy_(0.1 * torch.randn(c, generator=gen))
        both = norm(SparseTensor(coords, feats)).feats
        single = norm(SparseTensor(coords[coords[:, 0] == 0], feats[coords[:, 0] == 0])).feats
    for b in range(2):
        rows = coords[:, 0] == b
        ref = F.group_norm(feats[rows].t()[None], groups, norm.weight, norm.bias, norm.eps)[0].t()
        assert_close(both[rows], ref, 1e-5, 1e-5, f"item {b}")
    assert_close(single, both[coords[:, 0] == 0], 1e-5, 1e-5, "single-item path")


def test_half_precision_input_is_normalised_in_float32_and_returned_in_half():
    gen = torch.Generator().manual_seed(4)
    coords = torch.stack([torch.zeros(40), torch.arange(40), torch.zeros(40), torch.zeros(40)], 1).int()
    feats = (torch.randn(40, 8, generator=gen) * 100 + 1000).half()
    out = SparseGroupNorm(2, 8)(SparseTensor(coords, feats)).feats
    ref = F.group_norm(feats.float().t()[None], 2)[0].t()
    assert out.dtype == torch.float16
    assert_close(out.float(), ref, 5e-3, 5e-3, "fp16 group norm")
