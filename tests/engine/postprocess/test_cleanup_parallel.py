"""Clean-up's parallel algorithms (what a GPU runs) give the CPU path's results, checked on the CPU.

On CUDA, connected components and face orientation run as union-find rounds in torch; on the CPU they use
scipy. Here the union-find runs on the CPU (`components.CPU_COMPONENTS`) against scipy, on random graphs and on
random raw-like meshes with every defect clean-up handles; where a GPU is present, CUDA runs against the CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from engine.assets import Mesh
from engine.postprocess import components
from engine.postprocess.cleanup import (
    CleanupOptions,
    clean_mesh,
    drop_degenerate_faces,
    orient_faces,
    part_stats,
)
from engine.postprocess.components import component_roots
from engine.postprocess.half_edges import HalfEdges
from engine.postprocess.procedural import noisy_sphere

SEEDS = [0, 1, 2, 3]
OPTIONS = CleanupOptions(max_hole_perimeter=0.5)  # the test meshes are coarse: their small hole is ~0.3 around


@pytest.fixture(params=["scipy", "union-find"])
def search(request, monkeypatch) -> str:
    """Run the test with each way `component_roots` searches on the CPU."""
    monkeypatch.setattr(components, "CPU_COMPONENTS", request.param)
    return request.param


def raw_like_mesh(seed: int, flip_share: float = 0.01) -> tuple[Mesh, dict]:
    """A closed bumpy sphere with what a decoder mesh may carry, and what clean-up should report about it.

    Duplicated seam vertices (`noisy_sphere`), 1-3 floaters, an inward-wound wall inside the sphere, a small hole
    (the faces nearest a random point) and `flip_share` of the sphere's faces flipped (never face 0, which roots
    the repair: the flips are then undone exactly).
    """
    rng = np.random.default_rng(seed)
    n_floaters = int(rng.integers(1, 4))
    outer = noisy_sphere(int(rng.integers(3000, 6000)), jitter=1e-3, floaters=n_floaters, seed=seed)
    wall = noisy_sphere(2000, jitter=1e-3, seed=seed + 100)
    faces = outer.faces.copy()
    n_sphere = faces.shape[0] - n_floaters * 192  # the floaters' faces come last, 192 each
    centre = outer.vertices[faces[:n_sphere]].mean(axis=1)
    target = rng.normal(size=3)
    target = 0.4 * target / np.linalg.norm(target)
    hole = np.argsort(np.linalg.norm(centre - target, axis=1))[: int(rng.integers(4, 12))]
    flip = rng.random(faces.shape[0]) < flip_share
    flip[0], flip[n_sphere:] = False, False
    flip[hole] = False
    faces[flip] = faces[flip][:, [0, 2, 1]]
    faces = np.delete(faces, hole, axis=0)
    scale = rng.uniform(0.6, 0.85)
    mesh = Mesh(np.concatenate([outer.vertices, wall.vertices * scale]).astype(np.float32),
                np.concatenate([faces, wall.faces[:, [0, 2, 1]] + outer.vertices.shape[0]]).astype(np.int32),
                np.concatenate([outer.vertex_colors, wall.vertex_colors]))
    used = np.unique(mesh.faces)
    expected = {"welded_vertices": used.shape[0] - np.unique(mesh.vertices[used], axis=0).shape[0],
                "dropped_parts": n_floaters, "dropped_walls": 1, "filled_holes": 1, "flipped_faces": int(flip.sum())}
    return mesh, expected


def graph_roots_by_scipy(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    _, labels = connected_components(coo_matrix((np.ones(u.shape[0]), (u, v)), shape=(n, n)), directed=False)
    smallest = np.full(labels.max() + 1, n)
    np.minimum.at(smallest, labels, np.arange(n))
    return smallest[labels]


def assert_same_mesh(a: Mesh, b: Mesh) -> None:
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.vertex_colors, b.vertex_colors)


# ------------------------------------------------------------------------------------------------- components

@pytest.mark.parametrize("seed", SEEDS)
def test_union_find_gives_each_node_the_smallest_node_of_its_component(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(500, 3000))
    # Clusters of shuffled node numbers joined by random edges (paths and trees of any depth), plus singletons.
    cluster = rng.integers(0, n // 20, n)
    order = np.argsort(cluster, kind="stable")
    same = cluster[order[1:]] == cluster[order[:-1]]
    u, v = order[:-1][same], order[1:][same]  # a path through each cluster
    extra = rng.integers(0, n, (n // 2, 2))
    extra = extra[cluster[extra[:, 0]] == cluster[extra[:, 1]]]  # chords inside clusters
    u, v = np.concatenate([u, extra[:, 0]]), np.concatenate([v, extra[:, 1]])
    swap = rng.random(u.shape[0]) < 0.5
    u, v = np.where(swap, v, u), np.where(swap, u, v)
    expected = graph_roots_by_scipy(n, u, v)
    monkeypatch.setattr(components, "CPU_COMPONENTS", "union-find")
    roots = component_roots(n, torch.from_numpy(u), torch.from_numpy(v)).numpy()
    np.testing.assert_array_equal(roots, expected)
    assert len(np.unique(roots)) > 10  # many components, not one


def test_part_labels_come_in_the_order_of_each_part_smallest_vertex(search):
    mesh, _ = raw_like_mesh(4)
    s = part_stats(torch.from_numpy(mesh.vertices.astype(np.float64)), torch.from_numpy(mesh.faces.astype(np.int64)))
    labels = s.labels.numpy()
    first_vertex = np.array([np.flatnonzero(labels == p)[0] for p in range(s.count)])
    assert s.count > 3 and np.all(np.diff(first_vertex) > 0)


# ------------------------------------------------------------------------------------------------- passes

@pytest.mark.parametrize("seed", SEEDS)
def test_orientation_undoes_random_flips(seed, search):
    sphere = noisy_sphere(3000, jitter=1e-3, seed=seed)
    clean, _ = clean_mesh(sphere)
    faces = torch.from_numpy(clean.faces.astype(np.int64))
    flip = torch.from_numpy(np.random.default_rng(seed).random(faces.shape[0]) < 0.4)
    flip[0] = False  # face 0 keeps its winding: the others follow it
    flipped = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    out, undone = orient_faces(flipped, clean.vertices.shape[0])
    np.testing.assert_array_equal(out.numpy(), clean.faces)
    np.testing.assert_array_equal(undone.numpy(), flip.numpy())


@pytest.mark.parametrize("seed", SEEDS)
def test_degenerate_faces_go_and_the_first_of_each_vertex_triple_stays(seed):
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 12, (300, 3))  # few vertices: many triples repeat, some with a repeated vertex
    expected, seen = [], set()
    for face in faces.tolist():
        if len(set(face)) == 3 and frozenset(face) not in seen:
            seen.add(frozenset(face))
            expected.append(face)
    out = drop_degenerate_faces(torch.from_numpy(faces)).numpy()
    np.testing.assert_array_equal(out, np.array(expected))


# ------------------------------------------------------------------------------------------------- whole clean-up

@pytest.mark.parametrize("seed", SEEDS)
def test_union_find_and_scipy_clean_a_raw_like_mesh_the_same(seed, monkeypatch):
    mesh, _ = raw_like_mesh(seed, flip_share=0.3 if seed % 2 else 0.01)
    results = {}
    for search in ("scipy", "union-find"):
        monkeypatch.setattr(components, "CPU_COMPONENTS", search)
        results[search] = clean_mesh(mesh, OPTIONS)
    (a, report_a), (b, report_b) = results.values()
    assert_same_mesh(a, b)
    assert report_a == report_b


@pytest.mark.parametrize("seed", SEEDS)
def test_a_raw_like_mesh_comes_out_as_one_closed_outward_sphere(seed, search):
    mesh, expected = raw_like_mesh(seed)
    out, report = clean_mesh(mesh, OPTIONS)
    for name, value in expected.items():
        assert getattr(report, name) == value, name
    faces = torch.from_numpy(out.faces.astype(np.int64))
    s = part_stats(torch.from_numpy(out.vertices.astype(np.float64)), faces)
    assert s.count == 1 and float(s.volume[0]) > 0
    assert HalfEdges(faces, out.vertices.shape[0]).all_paired()
    # The flips were undone exactly: the same result as from the mesh that had none.
    reference, _ = clean_mesh(raw_like_mesh(seed, flip_share=0.0)[0], OPTIONS)
    assert_same_mesh(out, reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("seed", SEEDS)
def test_cuda_cleans_a_raw_like_mesh_as_the_cpu_does(seed):
    mesh, _ = raw_like_mesh(seed, flip_share=0.3 if seed % 2 else 0.01)
    on_cpu, report_cpu = clean_mesh(mesh, OPTIONS, device="cpu")
    on_cuda, report_cuda = clean_mesh(mesh, OPTIONS, device="cuda")
    assert report_cuda == report_cpu
    np.testing.assert_array_equal(on_cuda.faces, on_cpu.faces)
    # (sums by atomic adds on the GPU may differ in the last bits: the hole's centre vertex, say)
    np.testing.assert_allclose(on_cuda.vertices, on_cpu.vertices, atol=1e-6)
    np.testing.assert_allclose(on_cuda.vertex_colors, on_cpu.vertex_colors, atol=1e-6)
