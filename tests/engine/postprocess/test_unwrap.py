"""UV unwrap: UVs in the unit square, charts that do not overlap, gutters between charts, vertex map."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import maximum_filter, minimum_filter
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from engine.postprocess.cleanup import clean_mesh
from engine.postprocess.decimate import decimate
from engine.postprocess.raster import rasterize_uv
from engine.postprocess.procedural import noisy_sphere
from engine.postprocess.unwrap import unwrap

SIZE = 1024


@pytest.fixture(scope="module")
def unwrapped():
    mesh, _ = clean_mesh(noisy_sphere(40_000, seed=2))
    low = decimate(mesh, 4_000)
    out, vertex_map = unwrap(low, texture_size=SIZE, padding=4)
    return low, out, vertex_map


def test_vertex_map_points_back_at_the_same_positions_and_colours(unwrapped):
    low, out, vertex_map = unwrapped
    np.testing.assert_array_equal(out.vertices, low.vertices[vertex_map])
    assert out.faces.shape == low.faces.shape
    # the split mesh has the same triangles in 3-D
    np.testing.assert_array_equal(vertex_map[out.faces], low.faces)


def test_uvs_lie_in_the_unit_square_and_fill_it_reasonably(unwrapped):
    _, out, _ = unwrapped
    assert out.uvs.min() >= 0.0 and out.uvs.max() <= 1.0
    tri = out.uvs[out.faces]
    area = 0.5 * np.abs(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
    assert 0.35 < area.sum() < 0.9


def test_charts_do_not_overlap_and_keep_a_gutter(unwrapped):
    _, out, _ = unwrapped
    faces = torch.from_numpy(out.faces.astype(np.int64))
    cover = rasterize_uv(torch.from_numpy(out.uvs), faces, SIZE, margin=0.0)
    # no overlap: the texels claimed add up to the UV area
    tri = out.uvs[out.faces]
    area = 0.5 * np.abs(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])).sum() * SIZE * SIZE
    assert abs(cover.texel.numel() - area) < 0.02 * area
    # gutter: no texel has texels of two different charts within one texel of it
    e = np.concatenate([out.faces[:, [0, 1]], out.faces[:, [1, 2]]])
    n_charts, vertex_chart = connected_components(
        coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(out.uvs),) * 2), directed=False)
    assert n_charts > 1
    chart = np.full(SIZE * SIZE, -1)
    chart[cover.texel.numpy()] = vertex_chart[out.faces[cover.face.numpy(), 0]]
    chart = chart.reshape(SIZE, SIZE)
    high = maximum_filter(np.where(chart >= 0, chart, -1), size=3)
    low = minimum_filter(np.where(chart >= 0, chart, n_charts), size=3)
    assert not np.any((high >= 0) & (low < n_charts) & (high != low))


@pytest.mark.parametrize("piece_faces, min_piece_faces, cores", [(700, 2_500, 1), (8_000, 200, 16)])
def test_pieces_are_stitched_back_in_face_order(monkeypatch, piece_faces, min_piece_faces, cores):
    import engine.postprocess.unwrap as unwrap_module

    # 3,000 faces -> 5 pieces of <= 700 faces; or, on 16 cores, 15 pieces of >= 200 faces
    monkeypatch.setattr(unwrap_module, "PIECE_FACES", piece_faces)
    monkeypatch.setattr(unwrap_module, "MIN_PIECE_FACES", min_piece_faces)
    monkeypatch.setattr(unwrap_module, "_usable_cores", lambda: cores)
    mesh, _ = clean_mesh(noisy_sphere(12_000, seed=5))
    low = decimate(mesh, 3_000)
    out, vertex_map = unwrap(low, texture_size=512, padding=4)
    np.testing.assert_array_equal(vertex_map[out.faces], low.faces)
    np.testing.assert_array_equal(out.vertices, low.vertices[vertex_map])
    cover = rasterize_uv(torch.from_numpy(out.uvs), torch.from_numpy(out.faces.astype(np.int64)), 512, margin=0.0)
    tri = out.uvs[out.faces]
    area = 0.5 * np.abs(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])).sum() * 512 * 512
    assert abs(cover.texel.numel() - area) < 0.03 * area  # the pieces' charts do not overlap


def test_morton_codes_interleave_the_grid_coordinates_bits():
    from engine.postprocess.unwrap import _morton_codes

    points = np.random.default_rng(61).normal(size=(3000, 3)) * [1.0, 0.3, 2.0]
    q = ((points - points.min(0)) / np.ptp(points, axis=0).max() * 1023).astype(np.int64)
    expected = np.zeros(len(points), np.int64)
    for bit in range(10):
        for axis in range(3):
            expected |= ((q[:, axis] >> bit) & 1) << (3 * bit + axis)
    assert np.array_equal(_morton_codes(points), expected)
