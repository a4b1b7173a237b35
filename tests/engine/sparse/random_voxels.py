"""Random voxel sets for the sparse-operator and SLAT-decoder tests."""
from __future__ import annotations

import torch

from engine.sparse.tensor import SparseTensor


def random_coords(gen: torch.Generator, n: int, grid: int, batches: int = 1) -> torch.Tensor:
    """n distinct random voxels spread over `batches` items of a grid³: (n, 4) int32 [batch, x, y, z], random order."""
    cells = torch.randperm(batches * grid**3, generator=gen)[:n]
    b, rest = cells // grid**3, cells % grid**3
    return torch.stack([b, rest // grid**2, (rest // grid) % grid, rest % grid], dim=1).int()


def random_items(
    gen: torch.Generator, sizes: tuple[int, ...], grid: int, channels: int
) -> tuple[SparseTensor, list[SparseTensor]]:
    """One random item (voxels of a grid³, random features) per size: all of them as one batch (item b has batch
    index b, rows item after item), and each alone (batch index 0)."""
    coords = [random_coords(gen, n, grid) for n in sizes]
    feats = [torch.randn(c.shape[0], channels, generator=gen) for c in coords]
    batch_index = [torch.tensor([b, 0, 0, 0], dtype=torch.int32) for b in range(len(sizes))]
    batched = SparseTensor(torch.cat([c + i for c, i in zip(coords, batch_index)]), torch.cat(feats))
    return batched, [SparseTensor(c, f) for c, f in zip(coords, feats)]
