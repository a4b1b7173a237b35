"""Gaussian PLY: the Inria 3DGS header and columns, matching the official writer's fields."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.assets import Gaussians
from engine.errors import InputError
from engine.export.ply import PLY_FIELDS, write_gaussian_ply
from tests.engine.parity import load_case

EXPECTED_HEADER = ["ply", "format binary_little_endian 1.0"]


def read_ply(data: bytes):
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    count = int([line for line in header if line.startswith("element vertex")][0].split()[-1])
    names = [line.split()[-1] for line in header if line.startswith("property")]
    assert all(line.startswith("property float ") for line in header if line.startswith("property"))
    table = np.frombuffer(data[end:], dtype="<f4").reshape(count, len(names))
    return header, names, table


def gaussians_from_case():
    out = load_case("gs_decoder").outputs
    return Gaussians(
        xyz=out["xyz"].numpy(),
        colors=out["color_rgb"].numpy(),
        scaling=out["scaling"].numpy(),
        rotation=(out["_rotation"] + torch.tensor([1.0, 0, 0, 0])).numpy(),  # as the engine keeps it
        opacity=out["opacity"].numpy().reshape(-1),
    ), out["ply_fields"].numpy()


def test_ply_matches_the_official_fields(tmp_path):
    gaussians, expected = gaussians_from_case()
    path = write_gaussian_ply(tmp_path / "splat.ply", gaussians)
    header, names, table = read_ply(path.read_bytes())
    assert header[:2] == EXPECTED_HEADER and header[-1] == "end_header"
    assert names == list(PLY_FIELDS) == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                                         "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert table.shape == expected.shape == (len(gaussians), 17)
    np.testing.assert_allclose(table, expected, atol=1e-5, rtol=1e-5)
    assert (path.stat().st_size - len("\n".join(header)) - 1) == 17 * 4 * len(gaussians)


def test_ply_columns_invert_the_activations():
    g = np.random.default_rng(0)
    gaussians = Gaussians(xyz=g.normal(size=(10, 3)).astype(np.float32), colors=g.random((10, 3)).astype(np.float32),
                          scaling=g.uniform(1e-3, 0.1, (10, 3)).astype(np.float32),
                          rotation=g.normal(size=(10, 4)).astype(np.float32),
                          opacity=g.uniform(0.01, 0.99, 10).astype(np.float32))
    from engine.export.ply import gaussian_ply_fields

    t = gaussian_ply_fields(gaussians)
    np.testing.assert_allclose(0.28209479177387814 * t[:, 6:9] + 0.5, gaussians.colors, atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-t[:, 9])), gaussians.opacity, atol=1e-6)
    np.testing.assert_allclose(np.exp(t[:, 10:13]), gaussians.scaling, rtol=1e-5)
    np.testing.assert_array_equal(t[:, 13:], gaussians.rotation)
    np.testing.assert_array_equal(t[:, 3:6], 0)


def test_empty_or_broken_gaussians_are_input_errors(tmp_path):
    empty = Gaussians(*(np.zeros((0, k), np.float32) for k in (3, 3, 3, 4)), opacity=np.zeros(0, np.float32))
    with pytest.raises(InputError, match="no Gaussians"):
        write_gaussian_ply(tmp_path / "a.ply", empty)
    broken = Gaussians(np.full((1, 3), np.nan, np.float32), np.zeros((1, 3), np.float32),
                       np.ones((1, 3), np.float32), np.ones((1, 4), np.float32), np.ones(1, np.float32) * 0.5)
    with pytest.raises(InputError, match="NaN"):
        write_gaussian_ply(tmp_path / "b.ply", broken)
