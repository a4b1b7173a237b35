"""Focal/shift recovery, the view-plane grid, intrinsics and frames against upstream's goldens and by construction."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.moge.geometry import (
    focal_from_fov_x,
    normalized_intrinsics,
    normalized_view_plane_uv,
    pixel_intrinsics,
    recover_focal_shift,
    solve_focal_shift,
    solve_shift,
    solver_inputs,
    unproject_depth,
)
from tests.engine.parity import assert_close
from tests.paths import PARITY

MOGE = PARITY / "moge"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(MOGE / "moge_recover_focal_shift.safetensors"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((MOGE / "moge_recover_focal_shift.meta.json").read_text())


@pytest.mark.parametrize("name", ["uv.42x56", "uv.64x64", "uv.98x70", "uv.98x70.aspect1"])
def test_view_plane_uv_matches_upstream(golden, name):
    width, height = map(int, name.split(".")[1].split("x"))
    aspect_ratio = 1.0 if name.endswith("aspect1") else None
    uv = normalized_view_plane_uv(width, height, aspect_ratio)
    assert_close(uv, golden[name], atol=0, rtol=0, what=name)


def test_view_plane_uv_has_unit_half_diagonal_at_the_pixel_corners():
    uv = normalized_view_plane_uv(98, 70)
    half_pixel = torch.tensor([uv[0, 1, 0] - uv[0, 0, 0], uv[1, 0, 1] - uv[0, 0, 1]]) / 2
    corner = uv[-1, -1] + half_pixel
    assert math.isclose(corner.norm().item(), 1.0, rel_tol=1e-6)
    assert math.isclose((corner[0] / corner[1]).item(), 98 / 70, rel_tol=1e-6)


@pytest.mark.parametrize("case", ["rfs_a", "rfs_b", "rfs_c", "rfs_d", "rfs_e", "rfs_f"])
def test_recover_focal_shift_matches_upstream(golden, meta, case):
    inputs = meta["cases"][case]["inputs"]
    points = golden[inputs["points"]]
    mask = golden[inputs["mask"]] > 0.5 if "mask" in inputs else None
    focal_in = golden.get(f"{case}.in.focal")
    focal, shift = recover_focal_shift(points, mask, focal=focal_in)
    assert focal.shape == shift.shape == points.shape[:1]
    assert focal.dtype == shift.dtype == torch.float32
    assert_close(focal, golden[f"{case}.out.focal"], atol=0, rtol=1e-5, what=f"{case} focal")
    assert_close(shift, golden[f"{case}.out.shift"], atol=1e-7, rtol=1e-5, what=f"{case} shift")


def test_solver_sees_the_same_downsampled_masked_arrays_as_upstream(golden):
    uv_lr, points_lr, mask_lr = solver_inputs(golden["rfs_a.in.points"], golden["rfs_a.in.mask"] > 0.5)
    assert uv_lr.dtype == points_lr.dtype == np.float32
    assert np.array_equal(uv_lr[mask_lr[0]], golden["rfs_a.solver_in.0.uv"].numpy())
    assert np.array_equal(points_lr[0][mask_lr[0]], golden["rfs_a.solver_in.0.xyz"].numpy())


def test_numpy_solvers_match_upstream(golden):
    uv, xyz = golden["rfs_a.solver_in.0.uv"].numpy(), golden["rfs_a.solver_in.0.xyz"].numpy()
    focal, shift = solve_focal_shift(uv, xyz)
    assert math.isclose(focal, golden["solve_fs.out.focal"].item(), rel_tol=1e-5)
    assert math.isclose(shift, golden["solve_fs.out.shift"].item(), rel_tol=1e-5)
    shift_only = solve_shift(uv, xyz, np.float32(golden["solve_s.in.focal"].item()))
    assert math.isclose(shift_only, golden["solve_s.out.shift"].item(), rel_tol=1e-5)


def test_recovers_the_camera_of_an_exact_projective_pointmap():
    g = torch.Generator().manual_seed(3)
    height, width, focal_true, shift_true = 48, 64, 1.3, 0.6
    depth = 2.0 + torch.rand(height, width, generator=g)
    uv = normalized_view_plane_uv(width, height)
    points = torch.cat([uv * depth[..., None] / focal_true, depth[..., None]], dim=-1)  # exact projection
    points[..., 2] -= shift_true  # what an affine-invariant network would see
    focal, shift = recover_focal_shift(points[None], torch.rand(1, height, width, generator=g) > 0.2)
    assert math.isclose(focal.item(), focal_true, rel_tol=1e-3)
    assert math.isclose(shift.item(), shift_true, rel_tol=1e-3)


def test_intrinsics_from_focal_and_fov_are_consistent():
    aspect_ratio = 98 / 70
    focal = focal_from_fov_x(55.0, aspect_ratio)
    k = normalized_intrinsics(focal[None], aspect_ratio)[0]
    # fx in normalised coordinates: half the width (0.5) over tan(fov_x / 2).
    assert math.isclose(k[0, 0].item(), 0.5 / math.tan(math.radians(27.5)), rel_tol=1e-6)
    assert math.isclose(k[1, 1].item(), k[0, 0].item() * aspect_ratio, rel_tol=1e-6)  # square pixels
    assert k[0, 2].item() == k[1, 2].item() == 0.5 and k[2, 2].item() == 1.0


def test_unprojected_depth_reprojects_onto_the_pixel_centres():
    g = torch.Generator().manual_seed(4)
    height, width = 7, 11
    k = normalized_intrinsics(torch.tensor([0.9, 1.4]), width / height)  # (2, 3, 3)
    depth = 1.0 + torch.rand(2, height, width, generator=g)
    points_cv = unproject_depth(depth, k)  # (2, H, W, 3)
    k_px = pixel_intrinsics(k, width, height)  # (2, 4)
    fx, fy, cx, cy = (k_px[:, i, None, None] for i in range(4))
    u = fx * points_cv[..., 0] / points_cv[..., 2] + cx
    v = fy * points_cv[..., 1] / points_cv[..., 2] + cy
    assert torch.allclose(u, torch.arange(width) + 0.5, atol=1e-4)
    assert torch.allclose(v, torch.arange(height)[:, None] + 0.5, atol=1e-4)
    assert torch.equal(points_cv[..., 2], depth)

