"""Occupancy logits -> voxel coordinates: extraction, surface pruning and the voxel cap (parity ss_decoder)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.occupancy import MAX_COORDS, cap_voxel_count, coords_from_logits, keep_surface, sealed_cells
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


def _fine_voxels(cells: torch.Tensor, block: int) -> torch.Tensor:
    """Coarse cells (M, 3) -> all their fine voxels (M * block^3, 3), as the mesh decoder's subdivisions give."""
    sub = torch.arange(block)
    offsets = torch.stack(torch.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)
    return (cells[:, None] * block + offsets).reshape(-1, 3)


def test_sealed_cells_are_the_empty_cells_a_closed_shell_walls_in():
    gen = torch.Generator().manual_seed(4)
    g, block = 12, 2
    lo = torch.randint(0, 3, (3,), generator=gen)
    hi = lo + torch.randint(4, 8, (3,), generator=gen)  # a box of cells [lo, hi], at least 3 empty cells inside
    axis = torch.arange(g)
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    in_box = ((cells >= lo) & (cells <= hi)).all(dim=1)
    inside = ((cells > lo) & (cells < hi)).all(dim=1)
    shell = cells[in_box & ~inside]
    sealed = sealed_cells(_fine_voxels(shell, block).int(), g * block, block)
    assert sealed.shape == (g, g, g) and sealed.dtype == torch.bool
    assert torch.equal(sealed.reshape(-1), inside)  # exactly the box's interior

    # One fine voxel of a coarse cell occupies it: the shell stays closed with most of a cell's voxels gone.
    partial = torch.cat([shell[:1] * block, _fine_voxels(shell[1:], block)])
    assert torch.equal(sealed_cells(partial.int(), g * block, block).reshape(-1), inside)

    # A hole of one cell through a side (face-adjacent path to the outside) seals nothing.
    side = shell[(shell[:, 0] == lo[0]) & (shell[:, 1] > lo[1]) & (shell[:, 1] < hi[1])
                 & (shell[:, 2] > lo[2]) & (shell[:, 2] < hi[2])]  # fmt: skip
    opened = shell[~(shell == side[0]).all(dim=1)]
    assert not sealed_cells(_fine_voxels(opened, block).int(), g * block, block).any()

    # Cells touching the shell only along an edge or at a corner are not a way out.
    edge = shell[~((shell[:, 0] == lo[0]) & (shell[:, 1] == lo[1]))]  # the cells along one edge of the box gone
    assert torch.equal(sealed_cells(_fine_voxels(edge, block).int(), g * block, block).reshape(-1), inside)


def test_sealed_cells_of_nothing_and_a_bad_block():
    assert not sealed_cells(torch.zeros(0, 3, dtype=torch.int32), 8, 4).any()
    with pytest.raises(ValueError, match="multiple"):
        sealed_cells(torch.zeros(1, 3, dtype=torch.int32), 10, 4)
