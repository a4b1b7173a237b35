"""End to end: make_artist_mesh on a procedural decoder-like mesh, measured for shape, colour and seams."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.assets import Gaussians, Mesh
from engine.errors import InputError
from engine.postprocess import make_artist_mesh
from engine.postprocess.closest import SurfaceQuery
from engine.postprocess.cleanup import clean_mesh
from engine.postprocess.procedural import color_field, noisy_sphere

TEXTURE = 1024


@pytest.fixture(scope="module")
def source() -> Mesh:
    return noisy_sphere(160_000, floaters=2, seed=3)


@pytest.fixture(scope="module", params=["torch", "fast-simplification"])
def result(source, request) -> Mesh:
    return make_artist_mesh(source, faces=20_000, texture_size=TEXTURE, device="cpu", decimator=request.param)


def sample_surface(mesh: Mesh, n: int, seed: int):
    """Area-uniform random points on `mesh`: (points (n, 3), face (n,), barycentrics (n, 3))."""
    g = np.random.default_rng(seed)
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = g.choice(mesh.faces.shape[0], size=n, p=area / area.sum())
    r1, r2 = g.random(n), g.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    return (tri[face] * bary[:, :, None]).sum(1), face, bary


def bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample an (H, W, 3) uint8 texture (row 0 at the top) at UVs with the origin bottom-left -> (N, 3) in [0, 1]."""
    h, w = texture.shape[:2]
    x, y = uv[:, 0] * w - 0.5, (1.0 - uv[:, 1]) * h - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    tex = texture.astype(np.float64) / 255.0

    def at(yy, xx):
        return tex[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]

    return (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) + fy * ((1 - fx) * at(y0 + 1, x0)
                                                                          + fx * at(y0 + 1, x0 + 1))


def test_result_has_the_asked_face_count_uvs_and_texture(result):
    assert abs(result.faces.shape[0] - 20_000) <= 200
    assert result.texture.shape == (TEXTURE, TEXTURE, 3) and result.texture.dtype == np.uint8
    assert result.uvs.shape == (result.vertices.shape[0], 2)
    assert result.uvs.min() >= 0.0 and result.uvs.max() <= 1.0
    assert result.vertex_colors.shape == result.vertices.shape


def test_decimated_surface_stays_within_half_a_percent_of_the_diagonal(source, result):
    clean, _ = clean_mesh(source)  # the floaters are meant to go; measure against what stays
    diag = float(np.linalg.norm(clean.vertices.max(0) - clean.vertices.min(0)))
    to_result = SurfaceQuery(result.vertices, result.faces)
    to_source = SurfaceQuery(clean.vertices, clean.faces)
    a, _, _ = sample_surface(clean, 20_000, seed=1)
    b, _, _ = sample_surface(result, 20_000, seed=2)
    d_ab = to_result.closest(torch.from_numpy(a).float())[2].sqrt().numpy()
    d_ba = to_source.closest(torch.from_numpy(b).float())[2].sqrt().numpy()
    worst = max(d_ab.max(), d_ba.max())
    assert worst <= 0.005 * diag, f"two-way distance {worst / diag:.4%} of the diagonal"


def test_baked_texture_matches_the_source_colours(result):
    points, face, bary = sample_surface(result, 20_000, seed=4)
    uv = (result.uvs[result.faces[face]] * bary[:, :, None]).sum(1)
    seen = bilinear(result.texture, uv)
    truth = color_field(points / np.linalg.norm(points, axis=1, keepdims=True))
    mae = np.abs(seen - truth).mean()
    assert mae <= 3 / 255, f"mean absolute error {mae * 255:.2f}/255"


def test_texels_on_both_sides_of_a_chart_border_agree(result):
    # Seam edges: one 3-D edge that appears as two different UV edges (its two sides lie in two charts).
    v, f, uv = result.vertices, result.faces.astype(np.int64), result.uvs
    _, position = np.unique(v, axis=0, return_inverse=True)
    position = position.reshape(-1)
    a, b = f.ravel(), f[:, [1, 2, 0]].ravel()
    pa, pb = position[a], position[b]
    key = np.minimum(pa, pb) * v.shape[0] + np.maximum(pa, pb)
    order = np.argsort(key, kind="stable")
    k = key[order]
    pair = np.flatnonzero(k[1:] == k[:-1])
    h0, h1 = order[pair], order[pair + 1]
    seam = (a[h0] != b[h1]) | (b[h0] != a[h1])  # the two sides use different (split) vertices
    h0, h1 = h0[seam], h1[seam]
    assert h0.size > 100, "expected seams on an unwrapped sphere"
    t = np.linspace(0.05, 0.95, 7)[None, :, None]
    # side 0 runs a0 -> b0; side 1 runs the same 3-D edge the other way: b1 -> a1 (a1 at b0's position)
    uv0 = uv[a[h0]][:, None] * (1 - t) + uv[b[h0]][:, None] * t
    uv1 = uv[b[h1]][:, None] * (1 - t) + uv[a[h1]][:, None] * t
    c0 = bilinear(result.texture, uv0.reshape(-1, 2))
    c1 = bilinear(result.texture, uv1.reshape(-1, 2))
    diff = np.abs(c0 - c1)
    assert diff.mean() <= 2 / 255, f"mean difference across seams {diff.mean() * 255:.2f}/255"
    assert np.quantile(diff.max(1), 0.99) <= 8 / 255


@pytest.mark.parametrize("decimator", ["torch", "fast-simplification"])
def test_gaussian_colours_are_baked_where_given(source, decimator):
    # Gaussians on the surface carrying the inverted colour field must win over the mesh's own colours.
    clean, _ = clean_mesh(source)
    g = np.random.default_rng(5)
    points, _, _ = sample_surface(clean, 60_000, seed=6)
    direction = points / np.linalg.norm(points, axis=1, keepdims=True)
    q = g.normal(size=(points.shape[0], 4)).astype(np.float32)
    gaussians = Gaussians(
        xyz=points.astype(np.float32),
        colors=1.0 - color_field(direction),
        scaling=np.full((points.shape[0], 3), 6e-3, np.float32),
        rotation=q,
        opacity=np.full(points.shape[0], 0.9, np.float32),
    )
    out = make_artist_mesh(source, gaussians, faces="low", texture_size=512, device="cpu", decimator=decimator)
    p, face, bary = sample_surface(out, 5_000, seed=7)
    uv = (out.uvs[out.faces[face]] * bary[:, :, None]).sum(1)
    seen = bilinear(out.texture, uv)
    truth = 1.0 - color_field(p / np.linalg.norm(p, axis=1, keepdims=True))
    assert np.abs(seen - truth).mean() <= 8 / 255


def test_progress_runs_from_zero_to_one_through_every_stage(source):
    calls = []
    make_artist_mesh(noisy_sphere(20_000, seed=8), faces="low", texture_size=512, device="cpu",
                     progress=lambda stage, f: calls.append((stage, f)))
    fractions = [f for _, f in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert [s for s in dict.fromkeys(stage for stage, _ in calls)] == ["clean-up", "decimate", "unwrap", "bake"]


def test_an_empty_mesh_is_a_clear_input_error():
    empty = Mesh(vertices=np.zeros((0, 3), np.float32), faces=np.zeros((0, 3), np.int32))
    with pytest.raises(InputError, match="empty"):
        make_artist_mesh(empty)


@pytest.mark.parametrize("options, match", [
    ({"faces": "ultra"}, "preset"), ({"faces": 2}, "face count"), ({"texture_size": 100}, "texture_size"),
    ({"decimator": "qslim"}, "decimator"),
])
def test_unusable_options_are_clear_input_errors(options, match):
    with pytest.raises(InputError, match=match):
        make_artist_mesh(noisy_sphere(2_000), **options)


def test_a_single_triangle_comes_back_textured():
    tri = Mesh(vertices=np.array([[0, 0, 0], [0.4, 0, 0], [0, 0.3, 0.1]], np.float32),
               faces=np.array([[0, 1, 2]], np.int32), vertex_colors=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                                                              np.float32))
    out = make_artist_mesh(tri, texture_size=512, device="cpu")
    assert out.faces.shape == (1, 3)
    centre_uv = out.uvs[out.faces[0]].mean(0, keepdims=True)
    assert np.allclose(bilinear(out.texture, centre_uv), [1 / 3, 1 / 3, 1 / 3], atol=3 / 255)


def test_a_non_manifold_mesh_gives_a_textured_result():
    # Three sheets sharing one edge (a "book" of three pages) plus a bow-tie vertex.
    v = np.array([[0, 0, 0], [0, 0, 0.3], [0.3, 0, 0], [0, 0.3, 0], [-0.3, -0.1, 0], [0.2, 0.2, 0.4],
                  [0.25, 0.35, 0.3]], np.float32)
    f = np.array([[0, 1, 2], [0, 1, 3], [1, 0, 4], [1, 5, 6]], np.int32)
    colors = np.random.default_rng(0).random((7, 3)).astype(np.float32)
    out = make_artist_mesh(Mesh(v, f, colors), texture_size=512, device="cpu")
    assert out.faces.shape[0] == 4
    assert np.isfinite(out.vertices).all() and out.texture.shape == (512, 512, 3)


@pytest.mark.parametrize("decimator", ["torch", "fast-simplification"])
def test_nan_vertices_are_dropped_with_their_faces(decimator):
    mesh = noisy_sphere(5_000, seed=9)
    vertices = mesh.vertices.copy()
    vertices[::50] = np.nan
    touched = np.isnan(vertices[mesh.faces]).any(axis=(1, 2)).sum()
    for cleanup in (True, False):
        out = make_artist_mesh(Mesh(vertices, mesh.faces, mesh.vertex_colors), faces=100_000, texture_size=512,
                               cleanup=cleanup, device="cpu", decimator=decimator)
        assert np.isfinite(out.vertices).all()
        assert mesh.faces.shape[0] - touched <= out.faces.shape[0] <= mesh.faces.shape[0]  # holes may be filled


def test_all_nan_vertices_are_a_clear_input_error():
    mesh = noisy_sphere(2_000)
    with pytest.raises(InputError, match="NaN"):
        make_artist_mesh(Mesh(np.full_like(mesh.vertices, np.nan), mesh.faces, mesh.vertex_colors))


def test_a_mesh_without_colours_gets_a_neutral_texture():
    mesh = noisy_sphere(5_000)
    out = make_artist_mesh(Mesh(mesh.vertices, mesh.faces), faces="low", texture_size=512, device="cpu")
    assert out.vertex_colors is None
    assert np.all(np.abs(out.texture.astype(int) - 204) <= 1)  # 0.8 * 255


def test_mismatched_gaussians_are_a_clear_input_error():
    n = 10
    bad = Gaussians(xyz=np.zeros((n, 3), np.float32), colors=np.zeros((n, 3), np.float32),
                    scaling=np.ones((n, 3), np.float32), rotation=np.ones((n, 3), np.float32),
                    opacity=np.ones(n, np.float32))
    with pytest.raises(InputError, match="rotation"):
        make_artist_mesh(noisy_sphere(2_000), bad)
