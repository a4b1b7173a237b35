"""Torch's parallel edge collapse: face-count band, shape, orientation, topology, borders and odd inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from engine.assets import Mesh
from engine.postprocess.cleanup import clean_mesh
from engine.postprocess import collapse as collapse_module
from engine.postprocess.closest import SurfaceQuery
from engine.postprocess.collapse import STOP_SLACK, collapse_to_count
from engine.postprocess.deviation import surface_deviation
from engine.postprocess.procedural import noisy_sphere


def collapse(mesh: Mesh, target: int, device: str = "cpu") -> Mesh:
    v = torch.from_numpy(mesh.vertices).to(device)
    f = torch.from_numpy(mesh.faces.astype(np.int64)).to(device)
    v, f = collapse_to_count(v, f, target)
    return Mesh(vertices=v.cpu().numpy(), faces=f.cpu().numpy())


def edge_face_counts(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges (E, 2) and the number of faces on each."""
    pairs = np.sort(np.stack([faces, np.roll(faces, -1, axis=1)], axis=2).reshape(-1, 2), axis=1)
    return np.unique(pairs, axis=0, return_counts=True)


def euler_characteristic(mesh: Mesh) -> int:
    edges, _ = edge_face_counts(mesh.faces)
    return int(np.unique(mesh.faces).size - edges.shape[0] + mesh.faces.shape[0])


def is_closed_manifold_and_consistent(faces: np.ndarray) -> bool:
    directed = np.stack([faces, np.roll(faces, -1, axis=1)], axis=2).reshape(-1, 2)
    unique_directed = np.unique(directed, axis=0).shape[0] == directed.shape[0]  # no half-edge twice
    _, counts = edge_face_counts(faces)
    return bool(unique_directed and (counts == 2).all())


def face_normals(mesh: Mesh) -> np.ndarray:
    t = mesh.vertices[mesh.faces].astype(np.float64)
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def normal_agreement(source: Mesh, out: Mesh) -> np.ndarray:
    """(F_out,) cosine between each face's normal and the source's face under its centroid."""
    centroid = torch.from_numpy(out.vertices[out.faces].mean(1))
    below = SurfaceQuery(source.vertices, source.faces).closest(centroid)[0].numpy()
    return (face_normals(out) * face_normals(source)[below]).sum(1)


def diagonal(mesh: Mesh) -> float:
    return float(np.linalg.norm(mesh.vertices.max(0) - mesh.vertices.min(0)))


def two_way_distance(a: Mesh, b: Mesh, n: int, seed: int) -> float:
    return surface_deviation(a, b, n, seed)[0]


def noisy_torus(n_major: int, n_minor: int, seed: int) -> Mesh:
    """A closed torus (genus 1) of 2 n_major n_minor faces with random radial bumps."""
    g = np.random.default_rng(seed)
    u, v = np.meshgrid(np.arange(n_major) * 2 * np.pi / n_major, np.arange(n_minor) * 2 * np.pi / n_minor,
                       indexing="ij")
    r = 0.12 * (1.0 + 0.05 * np.sin(3 * u + 2 * v)) + g.normal(0, 2e-4, u.shape)
    points = np.stack([(0.3 + r * np.cos(v)) * np.cos(u), (0.3 + r * np.cos(v)) * np.sin(u), r * np.sin(v)], -1)
    i, j = np.meshgrid(np.arange(n_major), np.arange(n_minor), indexing="ij")
    a = i * n_minor + j
    b = ((i + 1) % n_major) * n_minor + j
    c = i * n_minor + (j + 1) % n_minor
    d = ((i + 1) % n_major) * n_minor + (j + 1) % n_minor
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return Mesh(vertices=points.reshape(-1, 3).astype(np.float32), faces=faces.astype(np.int32))


def wavy_strip(width: float, seed: int) -> Mesh:
    """An open strip two vertices wide and 200 long (every vertex on the border), wavy, with random jitter."""
    g = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 1, 200), [0.0, width], indexing="ij")
    z = 0.05 * np.sin(6 * x) + g.normal(0, 1e-4, x.shape)
    a = np.arange(199) * 2
    faces = np.concatenate([np.stack([a, a + 2, a + 3], 1), np.stack([a, a + 3, a + 1], 1)])
    return Mesh(vertices=np.stack([x, y, z], -1).reshape(-1, 3).astype(np.float32), faces=faces.astype(np.int32))


@pytest.fixture(autouse=True, params=["exact slots", "power-of-two slots"])
def slots(request, monkeypatch):
    """Every test runs on the CPU's slots (repacked every round) and on CUDA's (powers of two: dead face and
    vertex slots kept for several rounds, unused edge slots)."""
    if request.param == "power-of-two slots":
        monkeypatch.setattr(collapse_module, "ROUNDED_SLOTS", {"cuda", "cpu"})


@pytest.fixture(scope="module")
def sphere() -> Mesh:
    return clean_mesh(noisy_sphere(24_000, jitter=5e-4, seed=11))[0]


@pytest.fixture(scope="module")
def bowl() -> Mesh:
    """The sphere with its top cut off: an open surface with one border loop of ~0.31 radius."""
    mesh = clean_mesh(noisy_sphere(24_000, jitter=5e-4, seed=12))[0]
    keep = mesh.vertices[mesh.faces].mean(1)[:, 2] < 0.25
    return Mesh(vertices=mesh.vertices, faces=mesh.faces[keep])


@pytest.mark.parametrize("target", [1_200, 5_321])
def test_face_count_lands_in_the_target_band(sphere, target):
    out = collapse(sphere, target)
    assert target <= out.faces.shape[0] <= target * (1 + STOP_SLACK) + 1
    used = np.zeros(out.vertices.shape[0], bool)
    used[out.faces.ravel()] = True
    assert used.all()
    assert np.isfinite(out.vertices).all() and out.vertices.dtype == np.float32


def test_closed_surface_stays_close_manifold_and_outward(sphere):
    out = collapse(sphere, 2_000)
    assert is_closed_manifold_and_consistent(out.faces)
    assert euler_characteristic(out) == 2
    assert two_way_distance(sphere, out, 20_000, seed=3) <= 0.005 * diagonal(sphere)
    # No face folded over: every face's normal agrees with the original surface under its centroid.
    agreement = normal_agreement(sphere, out)
    assert agreement.min() > 0.0
    assert np.quantile(agreement, 0.01) > 0.9


def test_a_torus_keeps_its_hole():
    torus = noisy_torus(120, 40, seed=13)
    out = collapse(torus, 1_500)
    assert is_closed_manifold_and_consistent(out.faces)
    assert euler_characteristic(out) == 0  # genus 1
    assert two_way_distance(torus, out, 10_000, seed=4) <= 0.005 * diagonal(torus)


def test_open_borders_keep_their_shape(bowl):
    out = collapse(bowl, 1_500)
    edges, counts = edge_face_counts(out.faces)
    assert counts.max() == 2
    border_in, border_out = _border_points(bowl), _border_points(out)
    diag = diagonal(bowl)
    # The border runs where it ran, both ways (within half a percent of the diagonal), and did not shrink.
    assert cKDTree(border_in).query(border_out)[0].max() <= 0.005 * diag
    assert cKDTree(border_out).query(border_in)[0].max() <= 0.005 * diag
    assert two_way_distance(bowl, out, 10_000, seed=5) <= 0.005 * diag


def test_down_to_a_handful_of_faces_the_topology_holds(sphere, bowl):
    torus = collapse(noisy_torus(60, 20, seed=16), 10)  # a torus needs at least 14 faces
    assert torus.faces.shape[0] < 50
    assert is_closed_manifold_and_consistent(torus.faces) and euler_characteristic(torus) == 0
    tetrahedron = collapse(sphere, 4)
    assert tetrahedron.faces.shape[0] == 4
    assert is_closed_manifold_and_consistent(tetrahedron.faces) and euler_characteristic(tetrahedron) == 2
    disk = collapse(bowl, 10)
    assert disk.faces.shape[0] == 10 and euler_characteristic(disk) == 1
    edges, counts = edge_face_counts(disk.faces)
    assert counts.max() == 2 and np.bincount(edges[counts == 1].ravel()).max() == 2  # one border loop, no pinch


def test_a_narrow_strip_keeps_its_width():
    strip = wavy_strip(0.02, seed=17)
    out = collapse(strip, 100)
    assert out.faces.shape[0] == 100 and euler_characteristic(out) == 1
    assert two_way_distance(strip, out, 5_000, seed=7) <= 0.001 * diagonal(strip)


def test_a_hair_thin_strip_is_not_pinched():
    # Its rungs are the cheapest edges, but collapsing one joins the two borders at a vertex (a bow-tie).
    out = collapse(wavy_strip(1e-4, seed=18), 300)
    edges, counts = edge_face_counts(out.faces)
    assert counts.max() == 2 and np.bincount(edges[counts == 1].ravel()).max() == 2


def test_a_hemisphere_reaches_a_small_target(sphere):
    # Collapses that keep failing must give way to others, or the rounds stall far above the target.
    hemisphere = Mesh(vertices=sphere.vertices, faces=sphere.faces[sphere.vertices[sphere.faces].mean(1)[:, 2] < 0])
    out = collapse(hemisphere, 300)
    assert out.faces.shape[0] == 300 and euler_characteristic(out) == 1
    assert two_way_distance(hemisphere, out, 5_000, seed=8) <= 0.01 * diagonal(hemisphere)
    # Small turns add up over many rounds; a border face must still not end up facing the other way.
    assert normal_agreement(hemisphere, out).min() > 0.0


def test_a_non_manifold_edge_is_left_alone_and_no_new_one_appears(bowl):
    # A flap: a third face on one interior edge, out of the surface.
    edges, counts = edge_face_counts(bowl.faces)
    u, v = edges[np.flatnonzero(counts == 2)[1234]]
    tip = (bowl.vertices[u] + bowl.vertices[v]) / 2 + np.float32([0.0, 0.0, -0.05])
    vertices = np.concatenate([bowl.vertices, tip[None]])
    faces = np.concatenate([bowl.faces, [[u, v, bowl.vertices.shape[0]]]])
    out = collapse(Mesh(vertices=vertices, faces=faces.astype(np.int32)), 1_500)
    edges_out, counts_out = edge_face_counts(out.faces)
    assert (counts_out > 2).sum() == 1
    held = edges_out[counts_out > 2][0]
    np.testing.assert_allclose(out.vertices[held], vertices[[u, v]], atol=1e-6)  # locked in place


def test_the_result_does_not_depend_on_the_run(sphere):
    a, b = collapse(sphere, 3_000), collapse(sphere, 3_000)
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.vertices, b.vertices)


def test_power_of_two_slots_give_the_exact_slots_result(sphere, monkeypatch):
    exact = collapse(sphere, 1_500)
    monkeypatch.setattr(collapse_module, "ROUNDED_SLOTS", {"cuda", "cpu"})
    rounded = collapse(sphere, 1_500)
    np.testing.assert_array_equal(rounded.faces, exact.faces)
    np.testing.assert_array_equal(rounded.vertices, exact.vertices)


def test_a_negative_target_is_refused():
    mesh = noisy_torus(20, 10, seed=19)
    with pytest.raises(ValueError, match="0 or more"):
        collapse(mesh, -1)


def test_a_tetrahedron_cannot_lose_faces():
    g = np.random.default_rng(14)
    vertices = g.normal(size=(4, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [0, 3, 1], [1, 3, 2], [0, 2, 3]])
    if np.linalg.det(vertices[1:] - vertices[0]) < 0:
        faces = faces[:, ::-1]
    out = collapse(Mesh(vertices=vertices, faces=faces.astype(np.int32)), 1)
    assert out.faces.shape == (4, 3)
    assert is_closed_manifold_and_consistent(out.faces)


def test_tiny_and_empty_inputs_come_back_unchanged():
    g = np.random.default_rng(15)
    triangle = Mesh(vertices=g.normal(size=(3, 3)).astype(np.float32), faces=np.array([[0, 1, 2]], np.int32))
    out = collapse(triangle, 1)
    np.testing.assert_array_equal(out.faces, triangle.faces)
    np.testing.assert_allclose(out.vertices, triangle.vertices, rtol=1e-6, atol=1e-6)
    empty = collapse(Mesh(vertices=np.zeros((0, 3), np.float32), faces=np.zeros((0, 3), np.int32)), 10)
    assert empty.faces.shape == (0, 3) and empty.vertices.shape == (0, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_a_result_as_good_as_the_cpu(sphere):
    out = collapse(sphere, 2_000, device="cuda")
    assert 2_000 <= out.faces.shape[0] <= 2_000 * (1 + STOP_SLACK) + 1
    assert is_closed_manifold_and_consistent(out.faces)
    assert euler_characteristic(out) == 2
    assert two_way_distance(sphere, out, 20_000, seed=6) <= 0.005 * diagonal(sphere)


def _border_points(mesh: Mesh, per_edge: int = 16) -> np.ndarray:
    """Points along the border edges (those with one face), `per_edge` per edge."""
    edges, counts = edge_face_counts(mesh.faces)
    ends = mesh.vertices[edges[counts == 1]].astype(np.float64)  # (B, 2, 3)
    t = np.linspace(0.0, 1.0, per_edge)[None, :, None]
    return (ends[:, :1] * (1 - t) + ends[:, 1:] * t).reshape(-1, 3)
