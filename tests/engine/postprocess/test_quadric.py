"""Quadric error metric: plane quadrics, vertex quadrics with border planes, and the merged vertex's position."""
from __future__ import annotations

import numpy as np
import torch

from engine.postprocess.cleanup import clean_mesh
from engine.postprocess.procedural import noisy_sphere
from engine.postprocess.quadric import best_position, plane_quadrics, quadric_error, vertex_quadrics


def random_planes(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(3, n) unit normals, (n,) offsets, (n,) weights."""
    normal = torch.randn(3, n, generator=g, dtype=torch.float64)
    normal = normal / normal.norm(dim=0)
    return normal, torch.randn(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)


def test_a_plane_quadric_measures_the_weighted_squared_distance():
    g = torch.Generator().manual_seed(0)
    normal, offset, weight = random_planes(g, 500)
    points = torch.randn(3, 500, generator=g, dtype=torch.float64)
    expected = weight * ((normal * points).sum(0) + offset) ** 2
    torch.testing.assert_close(quadric_error(plane_quadrics(normal, offset, weight), points), expected)


def test_three_crossing_planes_merge_at_their_intersection():
    g = torch.Generator().manual_seed(1)
    n = 200
    corner = torch.randn(3, n, generator=g, dtype=torch.float64)
    q = torch.zeros(10, n, dtype=torch.float64)
    normals = []
    for _ in range(3):  # three planes through `corner`
        normal, _, weight = random_planes(g, n)
        normals.append(normal.T)
        q += plane_quadrics(normal, -(normal * corner).sum(0), 0.5 + weight)
    # keep well-conditioned triples only (nearly parallel random normals are the fallback's business)
    good = torch.linalg.det(torch.stack(normals, 1)).abs() > 0.2
    offset = 0.3 * torch.randn(3, n, generator=g, dtype=torch.float64)
    position, error = best_position(q, corner + offset, corner - offset)
    torch.testing.assert_close(position[:, good], corner[:, good], atol=1e-9, rtol=0)
    assert error[good].abs().max() < 1e-12


def test_a_flat_neighbourhood_keeps_the_end_on_the_plane():
    # One plane only: A is singular, so the candidates are the two ends and the midpoint.
    g = torch.Generator().manual_seed(2)
    normal, offset, weight = random_planes(g, 300)
    q = plane_quadrics(normal, offset, weight + 0.1)
    on_plane = torch.randn(3, 300, generator=g, dtype=torch.float64)
    on_plane -= ((normal * on_plane).sum(0) + offset) * normal
    off_plane = on_plane + (0.2 + torch.rand(300, generator=g, dtype=torch.float64)) * normal
    position, error = best_position(q, off_plane, on_plane)
    torch.testing.assert_close(position, on_plane)
    assert error.abs().max() < 1e-12


def test_vertex_quadrics_vanish_at_their_vertices_and_grow_off_the_surface():
    mesh = clean_mesh(noisy_sphere(3_000, jitter=1e-3, seed=3))[0]
    positions = torch.from_numpy(mesh.vertices).double().T  # (3, V)
    faces = torch.from_numpy(mesh.faces.astype(np.int64))
    q = vertex_quadrics(positions, faces, torch.zeros(0, dtype=torch.int64))  # closed: no border
    scale = q[0] + q[4] + q[7]  # trace of A: the summed plane weights
    assert (quadric_error(q, positions).abs() / scale).max() < 1e-12
    outward = positions * 1.01  # 1 % off a sphere of radius ~0.4: ~4e-3 off every face plane
    assert ((quadric_error(q, outward) / scale).sqrt() > 1e-3).all()


def test_border_planes_hold_an_open_border_in_place():
    # A random wavy sheet over the unit square: moving a border vertex across the border costs, along it barely.
    g = torch.Generator().manual_seed(4)
    n = 20
    x, y = torch.meshgrid(torch.linspace(0, 1, n, dtype=torch.float64), torch.linspace(0, 1, n, dtype=torch.float64),
                          indexing="ij")
    z = 0.05 * torch.sin(3 * x + 2 * y) + 1e-3 * torch.randn(n, n, generator=g, dtype=torch.float64)
    positions = torch.stack([x, y, z]).reshape(3, -1)
    i, j = torch.meshgrid(torch.arange(n - 1), torch.arange(n - 1), indexing="ij")
    a = (i * n + j).reshape(-1)
    faces = torch.cat([torch.stack([a, a + n, a + n + 1], 1), torch.stack([a, a + n + 1, a + 1], 1)])
    start, end = faces.reshape(-1), faces[:, [1, 2, 0]].reshape(-1)
    pair = torch.minimum(start, end) * n * n + torch.maximum(start, end)
    border = torch.nonzero((pair[:, None] == pair[None, :]).sum(1) == 1)[:, 0]  # only one face on the edge
    q = vertex_quadrics(positions, faces, border)
    side = torch.arange(1, n - 1)  # vertices on the border x = 0 (i = 0), not the corners
    across = positions[:, side] + torch.tensor([[-0.01], [0.0], [0.0]], dtype=torch.float64)
    along = positions[:, side] + torch.tensor([[0.0], [0.01], [0.0]], dtype=torch.float64)
    assert (quadric_error(q[:, side], across) > 20 * quadric_error(q[:, side], along)).all()
