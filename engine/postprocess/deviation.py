"""How far a decimated surface lies from its source: sampled two-way distances (tests and benchmarks).

`surface_deviation(a, b)` draws area-uniform random points on each mesh and measures their distance to the other
one. `SurfaceQuery` (closest.py) answers most points exactly but, on a coarse mesh of long triangles, can return
a farther point than the closest one (its first guess is the face with the nearest centroid), so its distances
are upper bounds. The largest distance is therefore made exact: the points are re-measured by brute force over
all faces, farthest first, until the next upper bound falls below the largest exact distance found.
"""
from __future__ import annotations

import numpy as np
import torch

from ..assets import Mesh
from .closest import SurfaceQuery

_PAIRS = 1 << 20  # (point, face) pairs per brute-force batch


def surface_deviation(a: Mesh, b: Mesh, samples: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """(largest, mean) distance from `samples` random points on each mesh to the other, in object units.

    The largest is exact; the mean uses `SurfaceQuery`'s distances (exact for all but a few points, never less).
    """
    g = np.random.default_rng(seed)
    largest, total = 0.0, 0.0
    for source, target in ((a, b), (b, a)):
        points = sample_surface(source, samples, g)
        upper = SurfaceQuery(target.vertices, target.faces).closest(torch.from_numpy(points).float())[2].sqrt()
        largest = max(largest, _exact_largest(points, upper.numpy().astype(np.float64), target))
        total += float(upper.double().sum())
    return largest, total / (2 * samples)


def sample_surface(mesh: Mesh, n: int, g: np.random.Generator) -> np.ndarray:
    """(n, 3) float64 area-uniform random points on `mesh`."""
    tri = mesh.vertices[mesh.faces].astype(np.float64)  # (F, 3, 3)
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = g.choice(mesh.faces.shape[0], size=n, p=area / area.sum())
    weights = g.dirichlet(np.ones(3), size=n)  # uniform barycentrics
    return (tri[face] * weights[:, :, None]).sum(1)


def _exact_largest(points: np.ndarray, upper: np.ndarray, mesh: Mesh) -> float:
    """The largest exact distance of `points` to `mesh`, given upper bounds `upper` of each one's distance."""
    order = np.argsort(-upper)
    batch = max(1, _PAIRS // mesh.faces.shape[0])
    largest = 0.0
    for start in range(0, order.shape[0], batch):
        chosen = order[start:start + batch]
        if upper[chosen[0]] <= largest:
            break  # no point left can be farther
        largest = max(largest, float(distance_to_triangles(points[chosen], mesh).max()))
    return largest


def distance_to_triangles(points: np.ndarray, mesh: Mesh) -> np.ndarray:
    """(P, 3) points -> (P,) exact distance to the nearest face of `mesh`, by brute force over all faces.

    Per (point, face): the distance to the face's plane when the point projects inside the triangle (on the
    inner side of all three edges), else the distance to the nearest of its three edges. Written per
    coordinate: every array is (P, F).
    """
    tri = torch.from_numpy(mesh.vertices[mesh.faces].astype(np.float64)).permute(1, 2, 0)  # (3 corners, 3, F)
    normal = torch.linalg.cross(tri[1] - tri[0], tri[2] - tri[0], dim=0)  # (3, F)
    p = torch.from_numpy(np.asarray(points, np.float64)).T[:, :, None]  # (3, P, 1)
    inside = torch.ones(p.shape[1], tri.shape[2], dtype=torch.bool)
    edge2 = torch.full(inside.shape, float("inf"), dtype=torch.float64)  # squared distance to the nearest edge
    for k in range(3):
        start, along = tri[k], tri[(k + 1) % 3] - tri[k]  # (3, F)
        inward = torch.linalg.cross(normal, along, dim=0)  # in the plane, towards the inside of this edge
        d = [p[i] - start[i] for i in range(3)]  # 3 x (P, F)
        inside &= d[0] * inward[0] + d[1] * inward[1] + d[2] * inward[2] >= 0
        dot = d[0] * along[0] + d[1] * along[1] + d[2] * along[2]
        length2 = (along * along).sum(0).clamp(min=1e-300)
        t = (dot / length2).clamp(0.0, 1.0)
        edge2 = torch.minimum(edge2, d[0] ** 2 + d[1] ** 2 + d[2] ** 2 - 2 * t * dot + t * t * length2)
    a = tri[0]
    plane = ((p[0] - a[0]) * normal[0] + (p[1] - a[1]) * normal[1] + (p[2] - a[2]) * normal[2]) ** 2
    plane2 = plane / (normal * normal).sum(0).clamp(min=1e-300)
    return torch.where(inside, plane2, edge2).min(dim=1).values.clamp(min=0).sqrt().numpy()
