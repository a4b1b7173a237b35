"""Fresh random test inputs shared by the speed-path and fused-code tests: networks and voxel sets."""
from __future__ import annotations

import torch
from torch import nn


def randomized(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """`module` in eval mode with fresh random weights everywhere, biases included (the constant paths depend on
    them): weights N(0, 1/fan_in), vectors N(0, 0.3²)."""
    module.eval()
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5 * (1 if p.dim() >= 2 else 0.3))
    return module


def random_voxels(gen: torch.Generator, count: int, grid: int) -> torch.Tensor:
    """`count` distinct random voxels of a grid^3, batch 0, lexicographic, (N, 4) int32."""
    keys = torch.randperm(grid**3, generator=gen)[:count].sort().values
    xyz = torch.stack([keys // grid**2, (keys // grid) % grid, keys % grid], dim=1)
    return torch.cat([torch.zeros(count, 1, dtype=torch.int64), xyz], dim=1).int()
