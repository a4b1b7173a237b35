"""Closest points on a mesh: against a brute-force search over every face."""
from __future__ import annotations

import numpy as np
import torch

from engine.postprocess.cleanup import clean_mesh
from engine.postprocess.closest import SurfaceQuery, closest_on_triangles
from engine.postprocess.procedural import noisy_sphere


def brute_force_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Exact point-triangle distances (float64), every point against every triangle -> (P,) minimum."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]  # (T, 3)
    best = np.full(p.shape[0], np.inf)
    n = np.cross(b - a, c - a)
    nn = (n * n).sum(1)
    for start in range(0, p.shape[0], 64):
        q = p[start:start + 64, None, :]  # (P, 1, 3)
        w = q - a
        b1 = (np.cross(w, c - a) * n).sum(-1) / nn
        b2 = (np.cross(b - a, w) * n).sum(-1) / nn
        inside = (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1)
        d = np.where(inside, ((w * n).sum(-1)) ** 2 / nn, np.inf)
        for u, v in ((a, b), (b, c), (c, a)):
            e = v - u
            t = np.clip(((q - u) * e).sum(-1) / (e * e).sum(-1), 0, 1)
            d = np.minimum(d, ((q - u - t[..., None] * e) ** 2).sum(-1))
        best[start:start + 64] = d.min(1)
    return np.sqrt(best)


def test_closest_on_triangles_is_exact_inside_on_edges_and_at_corners():
    g = np.random.default_rng(0)
    tri = g.normal(size=(2000, 3, 3))
    p = g.normal(size=(2000, 3)) * 1.5
    bary, d2, inside = closest_on_triangles(torch.from_numpy(p).float(), torch.from_numpy(tri).float())
    expected = np.array([brute_force_distance(p[i:i + 1], tri[i:i + 1])[0] for i in range(200)])
    np.testing.assert_allclose(np.sqrt(d2.numpy()[:200]), expected, atol=2e-5, rtol=1e-4)
    q = (bary.numpy()[:, :, None] * tri).sum(1)
    np.testing.assert_allclose(((p - q) ** 2).sum(1), d2.numpy(), atol=1e-4, rtol=1e-3)
    assert 0.05 < inside.float().mean() < 0.95 and (bary.numpy() >= 0).all()


def test_degenerate_triangles_answer_their_nearest_point():
    tri = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0]], [[1.0, 1, 1], [1, 1, 1], [1, 1, 1]]])
    p = torch.tensor([[1.5, 1.0, 0.0], [0.0, 1.0, 1.0]])
    _, d2, inside = closest_on_triangles(p, tri)
    np.testing.assert_allclose(d2.numpy(), [1.0, 1.0], atol=1e-6)
    assert not inside.any()


def test_mesh_queries_match_brute_force_near_a_rough_surface():
    mesh, _ = clean_mesh(noisy_sphere(3_000, jitter=4e-3, seed=1))
    query = SurfaceQuery(mesh.vertices, mesh.faces)
    g = np.random.default_rng(1)
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    pick = g.integers(0, len(tri), 1500)
    bary = g.dirichlet([1, 1, 1], 1500)
    p = (tri[pick] * bary[:, :, None]).sum(1) + g.normal(scale=5e-3, size=(1500, 3))
    face, b, d2 = query.closest(torch.from_numpy(p).float())
    expected = brute_force_distance(p, tri)
    found = np.sqrt(d2.numpy())
    assert np.mean(found <= expected + 1e-5) >= 0.98
    assert (found - expected).max() < 0.2 * np.linalg.norm(tri[:, 1] - tri[:, 0], axis=1).mean()
    # the answer is a point of the returned face at that distance
    q = (b.numpy()[:, :, None] * tri[face.numpy()]).sum(1)
    np.testing.assert_allclose(np.linalg.norm(p - q, axis=1), found, atol=1e-5)


def test_closest_near_agrees_with_closest_from_a_neighbouring_guess():
    mesh, _ = clean_mesh(noisy_sphere(20_000, seed=2))
    query = SurfaceQuery(mesh.vertices, mesh.faces)
    g = np.random.default_rng(2)
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    pick = g.integers(0, len(tri), 3000)
    p = (tri[pick] * g.dirichlet([1, 1, 1], 3000)[:, :, None]).sum(1) + g.normal(scale=1e-3, size=(3000, 3))
    pts = torch.from_numpy(p).float()
    face, _, d2 = query.closest(pts)
    # guesses: the answer for a point a little way off (a neighbouring texel)
    guess, _, _ = query.closest(pts + torch.from_numpy(g.normal(scale=5e-3, size=(3000, 3))).float())
    near_face, _, near_d2 = query.closest_near(pts, guess)
    np.testing.assert_allclose(np.sqrt(near_d2.numpy()), np.sqrt(d2.numpy()), atol=2e-5)
    assert (near_face == face).float().mean() > 0.98


def test_interpolate_blends_vertex_values_by_barycentrics():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    query = SurfaceQuery(v, np.array([[0, 1, 2]]))
    values = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    face, bary, _ = query.closest(torch.tensor([[0.25, 0.25, 0.3]]))
    np.testing.assert_allclose(query.interpolate(values, face, bary).numpy(), [[0.5, 0.25, 0.25]], atol=1e-6)


def test_the_grid_finds_the_same_closest_points_as_the_tree(monkeypatch):
    """On CUDA the centroid search is `NearestNeighbours`' grid; forced onto the CPU it must agree with the tree."""
    from engine.postprocess import neighbours

    mesh, _ = clean_mesh(noisy_sphere(8_000, jitter=2e-3, seed=3))
    g = np.random.default_rng(3)
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    pick = g.integers(0, len(tri), 4000)
    p = (tri[pick] * g.dirichlet([1, 1, 1], 4000)[:, :, None]).sum(1) + g.normal(scale=4e-3, size=(4000, 3))
    pts = torch.from_numpy(p).float()
    tree_face, _, tree_d2 = SurfaceQuery(mesh.vertices, mesh.faces).closest(pts)
    monkeypatch.setattr(neighbours, "GRID_DEVICE_TYPES", ("cpu", "cuda"))
    grid = SurfaceQuery(mesh.vertices, mesh.faces)
    assert grid.centroids.use_grid
    grid_face, _, grid_d2 = grid.closest(pts)
    assert sum(grid.centroids.answered[:-1]) > 0.9 * len(pts)  # the grid, not its k-d tree fallback, answered
    np.testing.assert_allclose(np.sqrt(grid_d2.numpy()), np.sqrt(tree_d2.numpy()), atol=1e-6)
    assert (grid_face == tree_face).float().mean() > 0.999
