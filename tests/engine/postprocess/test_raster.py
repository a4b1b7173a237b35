"""UV rasterisation: exact coverage of texel centres, no gaps on shared edges, the margin at chart borders."""
from __future__ import annotations

import numpy as np
import torch

from engine.postprocess.raster import MARGIN, rasterize_uv


def centres(size: int) -> np.ndarray:
    """(size*size, 2) texel centres in UV (origin bottom-left), in flat texel order (row 0 at the top)."""
    row, col = np.divmod(np.arange(size * size), size)
    return np.stack([(col + 0.5) / size, 1.0 - (row + 0.5) / size], axis=1)


def barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a, b, c = tri
    m = np.array([b - a, c - a]).T
    b1, b2 = np.linalg.solve(m, (p - a).T)
    return np.stack([1 - b1 - b2, b1, b2], axis=1)


def test_a_triangle_claims_exactly_the_texel_centres_inside_it():
    g = np.random.default_rng(0)
    size = 64
    for _ in range(5):
        uv = g.random((3, 2)).astype(np.float32)
        cover = rasterize_uv(torch.from_numpy(uv), torch.tensor([[0, 1, 2]]), size, margin=0.0)
        b = barycentric(centres(size), uv.astype(np.float64))
        inside = np.flatnonzero((b >= 1e-4).all(axis=1))
        near_edge = np.flatnonzero((b >= -1e-4).all(axis=1))
        claimed = cover.texel.numpy()
        assert np.isin(inside, claimed).all() and np.isin(claimed, near_edge).all()
        # the barycentrics give back the texel centre
        back = (cover.bary.numpy()[:, :, None] * uv[None]).sum(1)
        np.testing.assert_allclose(back, centres(size)[claimed], atol=1e-4)


def test_a_fan_of_triangles_covers_its_polygon_without_gaps_or_double_claims():
    # A regular 12-gon split into a fan around its centre: every texel centre inside is claimed once.
    size = 128
    angle = np.linspace(0, 2 * np.pi, 13)[:-1]
    uv = np.concatenate([[[0.5, 0.5]], 0.5 + 0.45 * np.stack([np.cos(angle), np.sin(angle)], 1)]).astype(np.float32)
    faces = torch.tensor([[0, 1 + i, 1 + (i + 1) % 12] for i in range(12)])
    cover = rasterize_uv(torch.from_numpy(uv), faces, size, margin=0.0)
    p = centres(size)
    inner_radius = 0.45 * np.cos(np.pi / 12) - 1.5 / size
    inside = np.flatnonzero(np.linalg.norm(p - 0.5, axis=1) < inner_radius)
    assert np.isin(inside, cover.texel.numpy()).all()
    assert np.unique(cover.texel.numpy()).size == cover.texel.numel()
    assert cover.inside.all()


def test_the_margin_claims_texels_just_outside_a_chart_border_with_clamped_barycentrics():
    size = 64
    uv = np.array([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75]], np.float32)
    cover = rasterize_uv(torch.from_numpy(uv), torch.tensor([[0, 1, 2]]), size)
    tight = rasterize_uv(torch.from_numpy(uv), torch.tensor([[0, 1, 2]]), size, margin=0.0)
    extra = ~np.isin(cover.texel.numpy(), tight.texel.numpy())
    assert extra.any() and not cover.inside.numpy()[extra].any() and cover.inside.numpy()[~extra].all()
    # margin texels lie within MARGIN texels of the triangle, and their barycentrics are on it
    b = cover.bary.numpy()
    assert (b >= 0).all() and np.allclose(b.sum(1), 1)
    on_triangle = (b[:, :, None] * uv[None]).sum(1)
    distance = np.linalg.norm(centres(size)[cover.texel.numpy()] - on_triangle, axis=1) * size
    assert distance[extra].max() <= MARGIN + 1e-3
    # a second, separate triangle: the margins of the two never take the other's inside texels
    uv2 = np.concatenate([uv, uv + np.float32([0.02, 0.0])])
    both = rasterize_uv(torch.from_numpy(uv2), torch.tensor([[0, 1, 2], [3, 4, 5]]), size)
    assert np.unique(both.texel.numpy()).size == both.texel.numel()


def test_interior_edges_get_no_margin():
    # Two triangles forming a square: the margin goes around the square, not along its diagonal.
    size = 32
    uv = np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]], np.float32)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    cover = rasterize_uv(torch.from_numpy(uv), faces, size)
    p = centres(size)[cover.texel.numpy()]
    in_square = (p > 0.25).all(1) & (p < 0.75).all(1)
    assert cover.inside.numpy()[in_square].all()
