"""Decimation: presets, custom counts, the choice of simplifier, and the face count actually reached."""
from __future__ import annotations

import numpy as np
import pytest

from engine.assets import Mesh
from engine.errors import InputError
from engine.postprocess.cleanup import clean_mesh
from engine.postprocess.decimate import FACE_PRESETS, decimate, resolve_decimator, resolve_face_count
from engine.postprocess.procedural import noisy_sphere

DECIMATORS = ["torch", "fast-simplification"]


@pytest.mark.parametrize("faces, expected", [
    ("low", 5_000), ("medium", 30_000), ("High", 150_000), (12_345, 12_345), ("8000", 8_000), (np.int64(99), 99),
])
def test_presets_and_custom_counts_resolve(faces, expected):
    assert resolve_face_count(faces) == expected


@pytest.mark.parametrize("faces", ["ultra", "", 3, -5, 2.5, True, None])
def test_unusable_face_counts_are_input_errors(faces):
    with pytest.raises(InputError):
        resolve_face_count(faces)


def test_presets_are_the_documented_sizes():
    assert FACE_PRESETS == {"low": 5_000, "medium": 30_000, "high": 150_000}


@pytest.mark.parametrize("decimator", DECIMATORS)
@pytest.mark.parametrize("target", [500, 3_000])
def test_decimation_reaches_the_target_on_a_closed_mesh(target, decimator):
    mesh, _ = clean_mesh(noisy_sphere(20_000, jitter=1e-3, seed=4))
    out = decimate(mesh, target, decimator=decimator)
    assert abs(out.faces.shape[0] - target) <= 0.02 * target
    used = np.zeros(out.vertices.shape[0], bool)
    used[out.faces.ravel()] = True
    assert used.all()  # no unused vertices
    assert (out.faces[:, 0] != out.faces[:, 1]).all() and (out.faces[:, 1] != out.faces[:, 2]).all()
    # the shape is kept: radii stay within the bumps of the procedural sphere
    radius = np.linalg.norm(out.vertices, axis=1)
    assert radius.min() > 0.35 and radius.max() < 0.45


@pytest.mark.parametrize("decimator", DECIMATORS)
def test_a_mesh_below_the_target_is_kept(decimator):
    mesh, _ = clean_mesh(noisy_sphere(2_000))
    out = decimate(mesh, 10_000, decimator=decimator)
    np.testing.assert_array_equal(out.faces, mesh.faces)
    np.testing.assert_array_equal(out.vertices, mesh.vertices)


@pytest.mark.parametrize("decimator", DECIMATORS)
def test_a_single_triangle_and_an_empty_mesh_come_back_as_they_are(decimator):
    g = np.random.default_rng(5)
    triangle = Mesh(vertices=g.normal(size=(3, 3)).astype(np.float32), faces=np.array([[0, 1, 2]], np.int32))
    out = decimate(triangle, 4, decimator=decimator)
    np.testing.assert_array_equal(out.faces, triangle.faces)
    np.testing.assert_array_equal(out.vertices, triangle.vertices)
    empty = decimate(Mesh(vertices=np.zeros((0, 3), np.float32), faces=np.zeros((0, 3), np.int32)), 4,
                     decimator=decimator)
    assert empty.faces.shape == (0, 3)


@pytest.mark.parametrize("decimator", DECIMATORS)
def test_faces_at_nan_vertices_are_dropped_before_decimating(decimator):
    mesh, _ = clean_mesh(noisy_sphere(8_000, jitter=1e-3, seed=6))
    vertices = mesh.vertices.copy()
    vertices[np.random.default_rng(7).choice(vertices.shape[0], 40, replace=False)] = np.nan
    out = decimate(Mesh(vertices=vertices, faces=mesh.faces), 1_000, decimator=decimator)
    assert np.isfinite(out.vertices).all()
    assert abs(out.faces.shape[0] - 1_000) <= 0.02 * 1_000
    with pytest.raises(InputError, match="NaN"):
        decimate(Mesh(vertices=np.full_like(vertices, np.nan), faces=mesh.faces), 1_000, decimator=decimator)


@pytest.mark.parametrize("decimator, device, expected", [
    ("auto", "cuda", "torch"), ("auto", "cuda:1", "torch"), ("auto", "cpu", "fast-simplification"),
    ("auto", None, "fast-simplification"), ("torch", "cpu", "torch"),
    ("fast-simplification", "cuda", "fast-simplification"),
])
def test_auto_takes_torch_on_cuda_and_fast_simplification_on_the_cpu(decimator, device, expected):
    assert resolve_decimator(decimator, device) == expected


def test_an_unknown_decimator_is_an_input_error():
    with pytest.raises(InputError, match="decimator"):
        resolve_decimator("qslim", "cpu")
