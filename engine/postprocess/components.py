"""Connected components of an undirected graph given as edge lists, in torch on any device (mesh parts, face
orientation classes in `cleanup.py`)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# How `component_roots` searches on the CPU: "scipy" (linear-time search, ~3x faster there than the union-find
# on one thread) or "union-find" (what other devices run; tests set it to check both agree).
CPU_COMPONENTS = "scipy"


def component_roots(n: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n,) the smallest node of each node's connected component; the graph has undirected edges (u[i], v[i]).

    CPU: scipy's breadth-first search (`CPU_COMPONENTS`). Elsewhere: union-find rounds. Each round, every root
    with an edge to another tree hooks onto the smallest root across such an edge (a scatter-min; pointers only
    go down, so no cycle forms), then pointer jumping (parent = parent[parent]) flattens every tree again, and
    edges inside one tree are dropped for good. Meshes need a handful of rounds; each has a few host reads.
    """
    device = u.device
    if device.type == "cpu" and CPU_COMPONENTS == "scipy":
        graph = coo_matrix((np.ones(u.shape[0], np.int8), (u.numpy(), v.numpy())), shape=(n, n))
        count, labels = connected_components(graph, directed=False)
        labels = torch.from_numpy(labels.astype(np.int64))
        smallest = torch.full((count,), n, dtype=torch.int64).scatter_reduce_(0, labels, torch.arange(n), "amin")
        return smallest.index_select(0, labels)
    parent = torch.arange(n, device=device)
    while u.shape[0]:
        ru, rv = parent.index_select(0, u), parent.index_select(0, v)  # roots: every tree is flat here
        across = torch.nonzero(ru != rv).squeeze(1)
        if across.shape[0] == 0:
            break
        u, v, ru, rv = (x.index_select(0, across) for x in (u, v, ru, rv))
        parent.scatter_reduce_(0, torch.maximum(ru, rv), torch.minimum(ru, rv), "amin")
        while True:
            grand = parent.index_select(0, parent)
            if torch.equal(grand, parent):
                break
            parent = grand
    return parent
