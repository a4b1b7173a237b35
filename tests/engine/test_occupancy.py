"""Occupancy logits -> voxel coordinates: extraction, surface pruning and the voxel cap (parity ss_decoder)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.occupancy import MAX_COORDS, cap_voxel_count, coords_from_logits, keep_surface
from tests.engine.parity import load_case


@pytest.fixture(scope="module")
def case():
    return load_case("ss_decoder")


def test_matches_official_coords_from_logits(case):
    coords = coords_from_logits(case.outputs["logits"])
    assert coords.dtype == torch.int32
    assert torch.equal(coords, case.outputs["coords_original"])


def test_matches_official_surface_pruning_of_decoded_and_solid_voxels(case):
    assert torch.equal(keep_surface(case.outputs["coords_original"]), case.outputs["coords_pruned"])
    assert torch.equal(keep_surface(case.inputs["solid_coords"]), case.outputs["solid_pruned"])


def test_matches_official_downsampling_with_a_small_cap(case):
    gen = torch.Generator().manual_seed(0)
    coords, factor = cap_voxel_count(case.outputs["coords_pruned"], generator=gen, max_coords=6525)
    assert factor == 2
    assert coords.dtype == torch.int32
    assert torch.equal(coords, case.outputs["coords_downsampled_small_max"])


def test_official_cap_leaves_the_official_coords_unchanged(case):
    coords, factor = cap_voxel_count(case.outputs["coords_pruned"], generator=torch.Generator())
    assert MAX_COORDS == 42000
    assert factor == 1 and torch.equal(coords, case.outputs["coords_pruned"])


def test_coords_from_random_logits_are_the_positive_cells_in_lexicographic_order():
    gen = torch.Generator().manual_seed(31)
    logits = torch.randn(2, 1, 6, 5, 7, generator=gen)
    expected = [
        (b, x, y, z)
        for b in range(2) for x in range(6) for y in range(5) for z in range(7)
        if logits[b, 0, x, y, z] > 0
    ]
    assert coords_from_logits(logits).tolist() == [list(r) for r in expected]


def test_keep_surface_drops_exactly_the_fully_surrounded_voxels_in_input_order():
    gen = torch.Generator().manual_seed(32)
    occupied = torch.rand(2, 12, 11, 10, generator=gen) < 0.93  # dense enough to have many interior voxels
    coords = torch.nonzero(occupied).to(torch.int32)
    coords = coords[torch.randperm(coords.shape[0], generator=gen)]  # any input order is kept
    count = _neighbour_count(occupied.numpy())
    expected = [r for r in coords.tolist() if count[r[0], r[1], r[2], r[3]] < 27]
    assert 0 < len(expected) < coords.shape[0]
    assert keep_surface(coords).tolist() == expected


def test_cap_halves_the_grid_by_the_stated_rounding_rule():
    gen = torch.Generator().manual_seed(33)
    coords = torch.nonzero(torch.rand(1, 23, 30, 17, generator=gen) < 0.5).to(torch.int32)
    coords[:, 1:] += torch.tensor([3, 1, 20], dtype=torch.int32)  # bounding box away from the origin
    out, factor = cap_voxel_count(coords, generator=gen, max_coords=coords.shape[0] - 1)
    assert factor == 2
    assert out.tolist() == _halved_reference(coords.numpy())


def test_cap_subsamples_at_random_beyond_the_halving_and_keeps_order():
    gen = torch.Generator().manual_seed(34)
    coords = torch.nonzero(torch.rand(1, 20, 20, 20, generator=gen) < 0.6).to(torch.int32)
    halved, _ = cap_voxel_count(coords, generator=gen, max_coords=coords.shape[0] - 1)
    first, factor = cap_voxel_count(coords, generator=torch.Generator().manual_seed(5), max_coords=300)
    again, _ = cap_voxel_count(coords, generator=torch.Generator().manual_seed(5), max_coords=300)
    other, _ = cap_voxel_count(coords, generator=torch.Generator().manual_seed(6), max_coords=300)
    assert halved.shape[0] > 300 and factor == 2
    assert first.shape == (300, 4) and first.dtype == torch.int32
    assert set(map(tuple, first.tolist())) <= set(map(tuple, halved.tolist()))
    assert first.tolist() == sorted(first.tolist())
    assert torch.equal(first, again) and not torch.equal(first, other)


# ---- helpers


def _neighbour_count(occupied: np.ndarray) -> np.ndarray:
    """(B, X, Y, Z) bool -> occupied cells in each 3×3×3 neighbourhood, outside the grid empty."""
    padded = np.pad(occupied.astype(np.int64), ((0, 0), (1, 1), (1, 1), (1, 1)))
    _, nx, ny, nz = occupied.shape
    total = np.zeros(occupied.shape, dtype=np.int64)
    for dx in range(3):
        for dy in range(3):
            for dz in range(3):
                total += padded[:, dx : dx + nx, dy : dy + ny, dz : dz + nz]
    return total


def _halved_reference(coords: np.ndarray) -> list[list[int]]:
    xyz = coords[:, 1:].astype(np.int64)
    mn, mx = xyz.min(axis=0), xyz.max(axis=0)
    size = (mx - mn + 1).astype(np.float32)
    target = size / np.float32(2)
    tmin = mn.astype(np.float32) + (size - target) / np.float32(2)
    tmax = tmin + target - np.float32(1)
    frac = (xyz - mn).astype(np.float32) / (mx - mn).astype(np.float32)
    scaled = np.round(frac * (target - np.float32(1)) + tmin)  # numpy rounds half to even
    scaled = np.clip(scaled, tmin.astype(np.int64), tmax.astype(np.int64)).astype(np.int64)
    rows = np.concatenate([coords[:, :1].astype(np.int64), scaled], axis=1)
    return [list(r) for r in sorted(set(map(tuple, rows.tolist())))]  # unique rows, lexicographic
