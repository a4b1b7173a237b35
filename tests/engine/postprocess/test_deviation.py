"""Surface deviation: exact point-to-triangle distances and the sampled two-way distance between meshes."""
from __future__ import annotations

import numpy as np
import torch

from engine.assets import Mesh
from engine.postprocess.cleanup import clean_mesh
from engine.postprocess.collapse import collapse_to_count
from engine.postprocess.deviation import distance_to_triangles, sample_surface, surface_deviation
from engine.postprocess.procedural import noisy_sphere


def test_point_to_triangle_distances_match_the_geometry():
    g = np.random.default_rng(0)
    a, b, c = g.normal(size=(3, 3))
    triangle = Mesh(vertices=np.stack([a, b, c]).astype(np.float32), faces=np.array([[0, 1, 2]], np.int32))
    a, b, c = triangle.vertices.astype(np.float64)
    normal = np.cross(b - a, c - a)
    normal /= np.linalg.norm(normal)
    n = 50
    height = g.uniform(-1, 1, n)
    # above the inside: the height
    w = g.dirichlet(np.ones(3), n)
    above = w @ np.stack([a, b, c]) + height[:, None] * normal
    np.testing.assert_allclose(distance_to_triangles(above, triangle), np.abs(height), atol=1e-6)
    # beside edge ab, out in the plane: the distance to the edge
    out_of_ab = np.cross(b - a, normal)  # in the plane, away from c
    out_of_ab /= np.linalg.norm(out_of_ab) * np.sign(np.dot(out_of_ab, a - c))
    t, side = g.uniform(0.1, 0.9, n), g.uniform(0.01, 1, n)
    beside = a + t[:, None] * (b - a) + side[:, None] * out_of_ab + height[:, None] * normal
    np.testing.assert_allclose(distance_to_triangles(beside, triangle), np.hypot(side, height), atol=1e-6)
    # beyond corner a, away from the triangle: the distance to the corner
    away = -((b - a) / np.linalg.norm(b - a) + (c - a) / np.linalg.norm(c - a))
    beyond = a + g.uniform(0.01, 1, n)[:, None] * away + height[:, None] * normal
    np.testing.assert_allclose(distance_to_triangles(beyond, triangle), np.linalg.norm(beyond - a, axis=1),
                               atol=1e-6)


def test_a_lifted_copy_deviates_by_the_lift():
    g = np.random.default_rng(1)
    x, y = np.meshgrid(np.linspace(0, 1, 30), np.linspace(0, 1, 30), indexing="ij")
    i, j = np.meshgrid(np.arange(29), np.arange(29), indexing="ij")
    k = (i * 30 + j).ravel()
    faces = np.concatenate([np.stack([k, k + 30, k + 31], 1), np.stack([k, k + 31, k + 1], 1)]).astype(np.int32)
    flat = np.stack([x, y, np.zeros_like(x)], -1).reshape(-1, 3)
    lift = g.uniform(0.01, 0.05)
    largest, mean = surface_deviation(Mesh(flat.astype(np.float32), faces),
                                      Mesh((flat + [0, 0, lift]).astype(np.float32), faces), 2_000, seed=2)
    assert abs(largest - lift) < 1e-6 and abs(mean - lift) < 1e-6


def test_the_largest_distance_is_exact_on_a_coarse_mesh():
    # A heavily decimated mesh has long triangles, where the nearest-centroid first guess can miss the closest face.
    fine = clean_mesh(noisy_sphere(3_000, jitter=1e-3, seed=3))[0]
    v, f = collapse_to_count(torch.from_numpy(fine.vertices), torch.from_numpy(fine.faces.astype(np.int64)), 60)
    coarse = Mesh(vertices=v.numpy(), faces=f.numpy())
    largest, _ = surface_deviation(fine, coarse, 1_000, seed=4)
    g = np.random.default_rng(4)
    on_fine, on_coarse = sample_surface(fine, 1_000, g), sample_surface(coarse, 1_000, g)
    brute = max(distance_to_triangles(on_fine, coarse).max(), distance_to_triangles(on_coarse, fine).max())
    assert largest == brute
