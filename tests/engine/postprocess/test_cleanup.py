"""Clean-up passes: welding, floaters, winding, outward normals, hole filling, and odd inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.assets import Mesh
from engine.errors import InputError
from engine.postprocess.cleanup import CleanupOptions, clean_mesh, fill_small_holes, orient_faces
from engine.postprocess.half_edges import HalfEdges
from engine.postprocess.procedural import noisy_sphere


def signed_volume(mesh: Mesh) -> float:
    t = mesh.vertices[mesh.faces].astype(np.float64)
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


def is_closed_and_consistent(mesh: Mesh) -> bool:
    return HalfEdges(torch.from_numpy(mesh.faces.astype(np.int64)), mesh.vertices.shape[0]).all_paired()


def boundary_vertices(mesh: Mesh) -> np.ndarray:
    """Start vertices of the half-edges that no other face shares."""
    faces = torch.from_numpy(mesh.faces.astype(np.int64))
    return faces.reshape(-1)[HalfEdges(faces, mesh.vertices.shape[0]).boundary()].numpy()


@pytest.fixture(scope="module")
def sphere() -> Mesh:
    return noisy_sphere(20_000, floaters=3, seed=1)


def test_seams_are_welded_and_floaters_dropped(sphere):
    out, report = clean_mesh(sphere)
    assert report.welded_vertices > 0 and report.dropped_parts == 3
    assert is_closed_and_consistent(out)
    assert signed_volume(out) > 0
    assert out.vertex_colors.shape == out.vertices.shape
    # the magenta floaters are gone, the sphere's colours stay
    assert not np.any(np.all(np.isclose(out.vertex_colors, [1.0, 0.0, 1.0]), axis=1))


def test_randomly_flipped_faces_get_one_outward_winding(sphere):
    clean, _ = clean_mesh(sphere)
    g = np.random.default_rng(2)
    faces = clean.faces.copy()
    flip = g.random(faces.shape[0]) < 0.3
    flip[0] = False  # face 0 roots the repair; with it flipped the repair would flip the others, then all
    faces[flip] = faces[flip][:, [0, 2, 1]]
    out, report = clean_mesh(Mesh(clean.vertices, faces, clean.vertex_colors))
    assert report.flipped_faces == flip.sum()
    np.testing.assert_array_equal(out.faces, clean.faces)


def test_an_inside_out_mesh_is_turned_outward(sphere):
    clean, _ = clean_mesh(sphere)
    out, report = clean_mesh(Mesh(clean.vertices, clean.faces[:, [0, 2, 1]], clean.vertex_colors))
    assert report.flipped_faces == clean.faces.shape[0]
    assert signed_volume(out) == pytest.approx(signed_volume(clean), rel=1e-6)


def test_a_small_hole_is_filled_and_a_large_one_is_kept(sphere):
    clean, _ = clean_mesh(sphere)
    centre = clean.vertices[clean.faces].mean(axis=1)
    top = np.array([0.0, 0.0, 1.0])
    side = np.array([1.0, 0.0, 0.0])
    direction = centre / np.linalg.norm(centre, axis=1, keepdims=True)
    small = direction @ top > 0.9993  # a cap of ~2 degrees: a short loop
    large = direction @ side > 0.7  # a wide cap: a long loop
    options = CleanupOptions(max_hole_perimeter=0.2)  # the small loop: 8 edges, 10 % of the diagonal long
    out, report = clean_mesh(Mesh(clean.vertices, clean.faces[~(small | large)], clean.vertex_colors), options)
    assert report.filled_holes == 1
    open_vertices = boundary_vertices(out)
    assert open_vertices.size > 0  # the large hole is still open
    assert np.all(out.vertices[open_vertices] @ side > 0.2)  # ... and only it
    centre_vertex = out.vertices[-1]  # appended by the fill
    assert np.linalg.norm(centre_vertex[:2]) < 0.01 and centre_vertex[2] > 0.3  # it closes the top cap


def test_hole_fill_continues_the_winding_of_the_neighbours():
    # A square of two triangles with an open square hole in the middle (a frame): the hole is filled outward.
    outer = np.array([[0, 0, 0], [3, 0, 0], [3, 3, 0], [0, 3, 0]], np.float64)
    inner = np.array([[1, 1, 0], [2, 1, 0], [2, 2, 0], [1, 2, 0]], np.float64)
    v = np.concatenate([outer, inner])
    f = np.array([[0, 1, 5], [0, 5, 4], [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]])
    v2, f2, _, filled = fill_small_holes(torch.from_numpy(v), torch.from_numpy(f), None, max_edges=10,
                                         max_perimeter=5.0)
    v2, f2 = v2.numpy(), f2.numpy()
    assert filled == 1 and f2.shape[0] == f.shape[0] + 4
    normals = np.cross(v2[f2[:, 1]] - v2[f2[:, 0]], v2[f2[:, 2]] - v2[f2[:, 0]])
    assert np.all(normals[:, 2] > 0)  # every face, old and new, faces +z
    assert np.allclose(v2[-1], [1.5, 1.5, 0])


def test_orientation_survives_a_moebius_strip():
    n = 24
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([np.cos(t), np.sin(t), np.zeros(n)], 1)
    half = t / 2
    offset = np.stack([np.cos(half) * np.cos(t), np.cos(half) * np.sin(t), np.sin(half)], 1) * 0.2
    v = np.concatenate([ring + offset, ring - offset])
    i = np.arange(n)
    j = (i + 1) % n
    # the last quad joins the strip to itself with a half twist
    top_j = np.where(j == 0, n, j)
    bot_j = np.where(j == 0, 0, n + j)
    f = np.concatenate([np.stack([i, n + i, top_j], 1), np.stack([n + i, bot_j, top_j], 1)])
    faces, flipped = orient_faces(torch.from_numpy(f), v.shape[0])
    assert faces.shape == f.shape and flipped.shape == (f.shape[0],)
    # the strip keeps its faces, each with its own three vertices
    np.testing.assert_array_equal(np.sort(faces.numpy(), axis=1), np.sort(f, axis=1))


def test_nan_vertices_take_their_faces_with_them(sphere):
    v = sphere.vertices.copy()
    v[0] = np.nan
    out, report = clean_mesh(Mesh(v, sphere.faces, sphere.vertex_colors))
    assert np.isfinite(out.vertices).all()
    assert report.dropped_faces == np.isnan(v[sphere.faces]).any(axis=(1, 2)).sum()


def test_duplicate_and_degenerate_faces_are_dropped():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 3, 1], [1, 1, 2]], np.int32)
    out, report = clean_mesh(Mesh(v, f), CleanupOptions(max_hole_edges=0))
    assert out.faces.shape[0] == 4 and report.dropped_faces == 3
    assert is_closed_and_consistent(out) and signed_volume(out) > 0


def test_empty_and_broken_meshes_are_clear_input_errors():
    with pytest.raises(InputError, match="empty"):
        clean_mesh(Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)))
    with pytest.raises(InputError, match="outside"):
        clean_mesh(Mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 5]], np.int32)))
    with pytest.raises(InputError, match="degenerate"):
        clean_mesh(Mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 1]], np.int32)))
    with pytest.raises(InputError, match="vertex_colors"):
        clean_mesh(Mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.int32), np.zeros((2, 3))))
