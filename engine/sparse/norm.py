"""GroupNorm on voxel features, computed in float32 whatever the weights' dtype.

Shapes: N voxels, C channels, B batch items, G groups.

`SparseGroupNorm`: statistics over all voxels of one batch item and the channels of one group (what a dense
GroupNorm over a (1, C, N_b) tensor computes), per batch item. State dict `weight`, `bias`. (Row-wise
LayerNorm needs no sparse version: use `engine.models.norms.LayerNorm32` on `feats`.)
"""
from __future__ import annotations

import torch
from torch import nn

from .tensor import SparseTensor


class SparseGroupNorm(nn.GroupNorm):
    """GroupNorm per batch item over (voxels x channels of a group), float32, affine per channel."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        feats = x.feats.float()  # (N, C)
        n, c = feats.shape
        g = self.num_groups
        grouped = feats.reshape(n, g, c // g)  # (N, G, C/G)
        if x.batch_size == 1:
            mean = grouped.mean(dim=(0, 2))  # (G,)
            centred = grouped - mean[None, :, None]
            var = centred.square().mean(dim=(0, 2))  # (G,) biased, like nn.GroupNorm
            normed = centred * torch.rsqrt(var + self.eps)[None, :, None]
        else:
            batch = x.batch_index  # (N,)
            # Voxels per item, cached on the voxel set: bincount on CUDA reads its input's max (a host sync).
            voxels = x.cached("batch_counts", lambda: torch.bincount(batch, minlength=x.batch_size))  # (B,)
            counts = voxels.float() * (c // g)  # (B,) elements per statistic
            sums = torch.zeros(x.batch_size, g, device=feats.device).index_add_(0, batch, grouped.sum(2))
            mean = sums / counts[:, None]  # (B, G)
            centred = grouped - mean.index_select(0, batch)[:, :, None]
            sq = torch.zeros(x.batch_size, g, device=feats.device).index_add_(0, batch, centred.square().sum(2))
            var = sq / counts[:, None]  # (B, G)
            normed = centred * torch.rsqrt(var + self.eps).index_select(0, batch)[:, :, None]
        out = normed.reshape(n, c)
        if self.affine:
            out = out * self.weight.float() + self.bias.float()
        return x.replace(out.to(x.dtype))
