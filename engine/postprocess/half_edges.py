"""Half-edges of a triangle list, sorted once so that every edge query of the clean-up is a slice (`cleanup.py`)."""
from __future__ import annotations

from functools import cached_property

import torch


class HalfEdges:
    """The half-edges of a face list sorted by (undirected edge, direction): one sort serves every edge query.

    Half-edge h = 3 f + k runs from corner k of face f to corner k + 1; its sort key is 2 (low V + high) + d with
    d = 1 when it runs high -> low, so the half-edges of an edge sit together, low -> high ones first, each
    direction in half-edge order.
    """

    def __init__(self, faces: torch.Tensor, n_vertices: int):
        a, b = faces.reshape(-1), faces.roll(-1, 1).reshape(-1)  # (H,) starts and ends
        # 2 (low V + high) + (a > b), in place (each big temporary costs as much as the arithmetic on the CPU)
        key = torch.minimum(a, b).mul_(2 * n_vertices).add_(torch.maximum(a, b), alpha=2).add_(a > b)
        self.key, self.order = torch.sort(key, stable=True)  # (H,) each

    def all_paired(self) -> bool:
        """Does every edge have exactly one half-edge each way (closed, manifold and consistently wound)?"""
        k = self.key
        if k.shape[0] % 2:
            return False
        return bool((((k[0::2] & 1) == 0) & (k[1::2] == k[0::2] + 1)).all())

    @cached_property
    def runs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(first (E,), count (E,)): where each edge's half-edges start in the sorted order, and how many."""
        edge = self.key >> 1
        new = torch.ones_like(edge, dtype=torch.bool)
        new[1:] = edge[1:] != edge[:-1]
        first = torch.nonzero(new).squeeze(1)
        return first, torch.diff(first, append=first.new_tensor([edge.shape[0]]))

    def manifold_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each edge with exactly two half-edges: their faces (f, g) and whether they run the same way."""
        first, count = self.runs
        two = first[count == 2]
        same = (self.key[two] & 1) == (self.key[two + 1] & 1)
        return self.order[two] // 3, self.order[two + 1] // 3, same

    def boundary(self) -> torch.Tensor:
        """(H,) bool in half-edge order: the half-edges whose edge no other half-edge uses."""
        first, count = self.runs
        single = torch.zeros_like(self.order, dtype=torch.bool)
        single[self.order[first[count == 1]]] = True
        return single
