"""Decimation: presets, custom counts, and the face count actually reached."""
from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError
from engine.postprocess.cleanup import clean_mesh
from engine.postprocess.decimate import FACE_PRESETS, decimate, resolve_face_count
from engine.postprocess.procedural import noisy_sphere


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


@pytest.mark.parametrize("target", [500, 3_000])
def test_decimation_reaches_the_target_on_a_closed_mesh(target):
    mesh, _ = clean_mesh(noisy_sphere(20_000, jitter=1e-3, seed=4))
    out = decimate(mesh, target)
    assert abs(out.faces.shape[0] - target) <= 0.02 * target
    used = np.zeros(out.vertices.shape[0], bool)
    used[out.faces.ravel()] = True
    assert used.all()  # no unused vertices
    assert (out.faces[:, 0] != out.faces[:, 1]).all() and (out.faces[:, 1] != out.faces[:, 2]).all()
    # the shape is kept: radii stay within the bumps of the procedural sphere
    radius = np.linalg.norm(out.vertices, axis=1)
    assert radius.min() > 0.35 and radius.max() < 0.45


def test_a_mesh_below_the_target_is_kept():
    mesh, _ = clean_mesh(noisy_sphere(2_000))
    out = decimate(mesh, 10_000)
    np.testing.assert_array_equal(out.faces, mesh.faces)
    np.testing.assert_array_equal(out.vertices, mesh.vertices)
