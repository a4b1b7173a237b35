"""The grid nearest-neighbour search against scipy's k-d tree: same distances, on every kind of cloud."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from engine.assets import Gaussians, Mesh
from engine.postprocess import neighbours
from engine.postprocess.bake import ColorSource, bake_texture
from engine.postprocess.neighbours import NearestNeighbours, _plan
from engine.postprocess.procedural import color_field

K = 8


def assert_exact(points: np.ndarray, queries: np.ndarray, dist: torch.Tensor, index: torch.Tensor, k: int) -> None:
    """`index` names k distinct points at the returned distances, and those are the k-d tree's k smallest."""
    dist, index = dist.numpy(), index.numpy()
    assert dist.shape == index.shape == (queries.shape[0], k)
    truth, _ = cKDTree(points.astype(np.float64)).query(queries.astype(np.float64), k=k)
    truth = np.asarray(truth).reshape(-1, k)
    scale = 1e-6 * max(1.0, float(np.abs(points).max()))
    np.testing.assert_allclose(dist, truth, rtol=1e-5, atol=scale)
    actual = np.linalg.norm(queries[:, None, :].astype(np.float64) - points[index].astype(np.float64), axis=-1)
    np.testing.assert_allclose(dist, actual, rtol=1e-5, atol=scale)
    ordered = np.sort(index, axis=1)
    assert (ordered[:, 1:] != ordered[:, :-1]).all(), "a point was returned twice for one query"


def decoder_like(voxels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres clustered as the Gaussian decoder places them: 32 jittered in each of `voxels` random 64^3 voxels
    of a sphere's surface; queries near those voxels (a third of a voxel off), some far inside and outside."""
    g = np.random.default_rng(seed)
    axis = (np.arange(64) + 0.5) / 64 - 0.5
    centres = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    surface = centres[np.abs(np.linalg.norm(centres, axis=1) - 0.4) < 1 / 64]
    chosen = surface[g.choice(surface.shape[0], size=voxels, replace=False)]
    points = (chosen[:, None, :] + g.uniform(-0.5, 0.5, size=(voxels, 32, 3)) / 64).reshape(-1, 3)
    near = chosen[g.integers(0, voxels, size=3000)] + g.normal(scale=1 / 192, size=(3000, 3))
    queries = np.concatenate([near, g.uniform(-0.6, 0.6, size=(200, 3))])
    return points.astype(np.float32), queries.astype(np.float32)


def test_uniform_points_match_the_kd_tree():
    g = np.random.default_rng(0)
    points = (g.uniform(-1, 1, size=(4000, 3)) * [1.0, 0.5, 2.0]).astype(np.float32)
    queries = (g.uniform(-1.1, 1.1, size=(3000, 3)) * [1.0, 0.5, 2.0]).astype(np.float32)
    search = NearestNeighbours(points, K, grid=True)
    dist, index = search.query(torch.from_numpy(queries))
    assert_exact(points, queries, dist, index, K)
    assert sum(search.answered[:-1]) > 0.95 * queries.shape[0], search.answered  # the grid did the work


def test_decoder_like_clusters_match_the_kd_tree():
    points, queries = decoder_like(300, seed=1)
    search = NearestNeighbours(points, K, grid=True)
    dist, index = search.query(torch.from_numpy(queries))
    assert_exact(points, queries, dist, index, K)
    assert sum(search.answered[:-1]) > 0.9 * queries.shape[0], search.answered


def test_far_away_queries_fall_back_to_the_tree_and_stay_exact():
    points, queries = decoder_like(100, seed=2)
    far = np.random.default_rng(3).normal(size=(5, 3)).astype(np.float32) * 40.0
    queries = np.concatenate([queries[:500], far])
    search = NearestNeighbours(points, K, grid=True)
    dist, index = search.query(torch.from_numpy(queries))
    assert_exact(points, queries, dist, index, K)
    assert search.answered[-1] >= far.shape[0]


def test_duplicated_points_match_the_kd_tree():
    g = np.random.default_rng(4)
    base = g.uniform(-1, 1, size=(700, 3)).astype(np.float32)
    points = np.concatenate([base, base, base, np.repeat(base[:1], 20, axis=0)])  # each thrice, one 23 times
    queries = np.concatenate([g.uniform(-1, 1, size=(800, 3)), base[:50]]).astype(np.float32)
    dist, index = NearestNeighbours(points, K, grid=True).query(torch.from_numpy(queries))
    assert_exact(points, queries, dist, index, K)


def test_fewer_points_than_k_returns_them_all_nearest_first():
    g = np.random.default_rng(5)
    points = g.normal(size=(5, 3)).astype(np.float32)
    queries = g.normal(size=(40, 3)).astype(np.float32)
    search = NearestNeighbours(points, K, grid=True)
    dist, index = search.query(torch.from_numpy(queries))
    assert search.k == 5
    assert_exact(points, queries, dist, index, 5)
    assert (np.sort(index.numpy(), axis=1) == np.arange(5)).all()


def test_queries_skipping_every_grid_level_are_answered_by_the_tree(monkeypatch):
    monkeypatch.setattr(neighbours, "GRID_LEVELS", 1)
    monkeypatch.setattr(neighbours, "MAX_CANDIDATES", 3 * K)  # most queries have more candidates than this
    points, queries = decoder_like(200, seed=6)
    search = NearestNeighbours(points, K, grid=True)
    dist, index = search.query(torch.from_numpy(queries))
    assert_exact(points, queries, dist, index, K)
    assert search.answered[0] > 0 and search.answered[-1] > queries.shape[0] // 2, search.answered


def test_tiny_chunks_give_the_same_answer(monkeypatch):
    points, queries = decoder_like(150, seed=7)
    whole = NearestNeighbours(points, K, grid=True).query(torch.from_numpy(queries))
    monkeypatch.setattr(neighbours, "CHUNK_CANDIDATES", 64)
    monkeypatch.setattr(neighbours, "_RANGE_CHUNK", 100)
    chunked = NearestNeighbours(points, K, grid=True).query(torch.from_numpy(queries))
    assert torch.equal(whole[0], chunked[0])
    assert_exact(points, queries, *chunked, K)


def test_chunk_plan_covers_the_searchable_counts_within_the_budget(monkeypatch):
    monkeypatch.setattr(neighbours, "CHUNK_CANDIDATES", 500)
    monkeypatch.setattr(neighbours, "MAX_CANDIDATES", 300)
    hist = np.random.default_rng(8).integers(0, 6, size=302)
    hist[::7] = 0
    counts = np.repeat(np.arange(302), hist)  # the queries' candidate counts, sorted
    chunks = _plan(hist, K)
    assert chunks[0][0] == int(hist[:K].sum()) and chunks[-1][1] == int(hist[:301].sum())
    for (_, end, _), (begin, _, _) in zip(chunks, chunks[1:]):
        assert end == begin
    for begin, end, width in chunks:
        assert width == counts[end - 1]
        assert (end - begin) * width <= 500 or end - begin == 1


def test_chunks_pad_little_beyond_their_rows_candidates(monkeypatch):
    # all the queries fit one chunk, but padding them all to the largest count would nearly double the work
    monkeypatch.setattr(neighbours, "CHUNK_CANDIDATES", 1 << 22)
    hist = np.zeros(neighbours.MAX_CANDIDATES + 2, np.int64)
    hist[K:65] = np.random.default_rng(11).integers(500, 1500, size=65 - K)
    counts = np.repeat(np.arange(hist.size), hist)
    chunks = _plan(hist, K)
    padded = sum((end - begin) * width for begin, end, width in chunks)
    # (a chunk's first 1/16 of the budget may pad more than the slack, so a little above it overall; one chunk: 1.8)
    assert len(chunks) > 1 and padded <= 1.3 * counts[counts >= K].sum()


def test_the_cpu_uses_the_tree_unless_told():
    g = np.random.default_rng(9)
    points = g.normal(size=(300, 3)).astype(np.float32)
    queries = g.normal(size=(50, 3)).astype(np.float32)
    search = NearestNeighbours(points, K, "cpu")
    dist, index = search.query(torch.from_numpy(queries))
    assert not search.use_grid and search.answered == [queries.shape[0]]
    assert_exact(points, queries, dist, index, K)


@pytest.mark.parametrize("points, k, match", [(np.ones((4, 2)), 3, "expected"), (np.ones((0, 3)), 3, "N >= 1"),
                                              (np.ones((4, 3)), 0, "at least 1")])
def test_bad_input_is_a_clear_error(points, k, match):
    with pytest.raises(ValueError, match=match):
        NearestNeighbours(points, k, grid=True)


def uv_sphere(rows: int, cols: int) -> Mesh:
    """A unit UV sphere with latitude-longitude UVs and colour_field vertex colours."""
    theta, phi = np.meshgrid(np.linspace(0, np.pi, rows + 1), np.linspace(0, 2 * np.pi, cols + 1), indexing="ij")
    vertices = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1).reshape(-1, 3)
    uvs = np.stack([phi / (2 * np.pi), 1 - theta / np.pi], -1).reshape(-1, 2)
    v = np.arange((rows + 1) * (cols + 1)).reshape(rows + 1, cols + 1)
    a, b, c, d = v[:-1, :-1], v[1:, :-1], v[1:, 1:], v[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return Mesh(vertices.astype(np.float32), faces.astype(np.int32),
                vertex_colors=color_field(vertices).astype(np.float32), uvs=uvs.astype(np.float32))


def test_the_bake_with_the_grid_matches_the_bake_with_the_tree(monkeypatch):
    mesh = uv_sphere(24, 48)
    g = np.random.default_rng(10)
    direction = g.normal(size=(20_000, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    gaussians = Gaussians(xyz=(direction * g.uniform(0.98, 1.02, size=(20_000, 1))).astype(np.float32),
                          colors=(1.0 - color_field(direction)).astype(np.float32),
                          scaling=g.uniform(0.005, 0.02, size=(20_000, 3)).astype(np.float32),
                          rotation=g.normal(size=(20_000, 4)).astype(np.float32),
                          opacity=g.uniform(0.3, 0.95, size=20_000).astype(np.float32))
    tree_texture, tree_mask = bake_texture(mesh, ColorSource(mesh, gaussians), 128)
    monkeypatch.setattr(neighbours, "GRID_DEVICE_TYPES", ("cpu", "cuda"))
    source = ColorSource(mesh, gaussians)
    assert source.gaussians.neighbours.use_grid
    grid_texture, grid_mask = bake_texture(mesh, source, 128)
    assert (grid_mask == tree_mask).all() and tree_mask.mean() > 0.5
    assert np.abs(grid_texture.astype(int) - tree_texture.astype(int)).max() <= 1
