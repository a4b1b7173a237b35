"""From the SS decoder's occupancy logits to the voxel coordinates stage 2 works on (spec §7).

Coordinates are (N, 4) int32 rows (batch, x, y, z). Three steps, in pipeline order:

1. `coords_from_logits`: every cell with logit > 0, in lexicographic order;
2. `keep_surface`: drop interior voxels (all 27 cells of their 3×3×3 neighbourhood occupied), order kept;
3. `cap_voxel_count`: when more than `max_coords` voxels remain, halve the grid around the bounding box
   centre (factor 2, which the pipeline multiplies into the pose scale), then subsample at random if still over.

And one step back, for mesh extraction: `sealed_cells` finds the interior that step 2 emptied (every empty cell
the voxels wall in), so that the extraction can count it as inside again.
"""
from __future__ import annotations

import scipy.ndimage
import torch
import torch.nn.functional as F

MAX_COORDS = 42000  # the official cap (keeps the mesh decoder's int32 indexing in range)


def coords_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """logits (B, 1, X, Y, Z) -> (N, 4) int32 (batch, x, y, z) of the cells with logit > 0, lexicographic."""
    if logits.dim() != 5 or logits.shape[1] != 1:
        raise ValueError(f"coords_from_logits expects logits of shape (B, 1, X, Y, Z), got {tuple(logits.shape)}")
    return torch.nonzero(logits[:, 0] > 0).to(torch.int32)  # (N, 4), rows in lexicographic order


def keep_surface(coords: torch.Tensor) -> torch.Tensor:
    """Keep the voxels whose 3×3×3 occupancy count (itself included, outside the grid empty) is below 27.

    coords (N, 4) int32 (batch, x, y, z) -> (M, 4), a subset in the input order.
    """
    if coords.shape[0] == 0:
        return coords
    c = coords.long()
    lo = c.amin(dim=0)
    xyz = c[:, 1:] - lo[1:] + 1  # (N, 3), one empty cell of margin on each side
    sides = (xyz.amax(dim=0) + 2).tolist()
    batches = int(c[:, 0].max()) - int(lo[0]) + 1
    grid = torch.zeros(batches, 1, *sides, dtype=torch.float32, device=coords.device)  # (B', 1, X, Y, Z)
    grid[c[:, 0] - lo[0], 0, xyz[:, 0], xyz[:, 1], xyz[:, 2]] = 1.0
    kernel = torch.ones(1, 1, 3, 3, 3, dtype=torch.float32, device=coords.device)
    count = F.conv3d(grid, kernel, padding=1)  # (B', 1, X, Y, Z), exact small integers
    keep = count[c[:, 0] - lo[0], 0, xyz[:, 0], xyz[:, 1], xyz[:, 2]] < 27
    return coords[keep]


def sealed_cells(voxels: torch.Tensor, resolution: int, block: int) -> torch.Tensor:
    """The empty cells of a coarse grid that the voxels wall in: (G, G, G) bool on the voxels' device, G = R / block.

    voxels (N, 3) int: fine voxels (x, y, z) in [0, R)^3, R = `resolution`; coarse cell c holds the fine voxels
    c * block + [0, block)^3 and is occupied when any of them is listed. An empty coarse cell is sealed when no
    path through face-adjacent empty cells leads from it out of the grid: what `keep_surface` pruned, and any
    closed cavity. A shell with an opening seals nothing behind the opening.
    """
    if resolution % block:
        raise ValueError(f"sealed_cells: resolution {resolution} is not a multiple of the block {block}")
    g = resolution // block
    # One empty cell of margin: the outside is one connected region. The grid is filled where the voxels are and
    # only it goes to the host (a few hundred kB, where the voxels can be tens of MB).
    occupied = torch.zeros((g + 2,) * 3, dtype=torch.bool, device=voxels.device)
    cells = voxels.long() // block + 1
    occupied[cells[:, 0], cells[:, 1], cells[:, 2]] = True
    labels, _ = scipy.ndimage.label(~occupied.cpu().numpy())  # face-adjacent (6-connected) empty regions, from 1
    sealed = (labels > 0) & (labels != labels[0, 0, 0])
    return torch.from_numpy(sealed[1:-1, 1:-1, 1:-1].copy()).to(voxels.device)


def cap_voxel_count(
    coords: torch.Tensor, *, generator: torch.Generator, max_coords: int = MAX_COORDS
) -> tuple[torch.Tensor, int]:
    """Limit the voxel count to `max_coords`; returns (coords, factor) with factor 1 (unchanged) or 2.

    Over the cap, per axis over all rows: mn, mx, size = mx − mn + 1, target = size / 2,
    tmin = mn + (size − target) / 2, tmax = tmin + target − 1,
    c' = round((c − mn) / (mx − mn) · (target − 1) + tmin) (half to even, float32), clamped to
    [int(tmin), int(tmax)]; duplicate rows are removed (result lexicographic). If still over the cap, a random
    subset of `max_coords` rows is kept (drawn with `generator`, kept in lexicographic order).
    """
    if coords.shape[0] <= max_coords:
        return coords, 1

    # 1. Halve the grid around the bounding box centre
    xyz = coords[:, 1:].long()
    mn, mx = xyz.amin(dim=0), xyz.amax(dim=0)
    size = (mx - mn + 1).float()
    target = size / 2
    tmin = mn.float() + (size - target) / 2
    tmax = tmin + target - 1
    scaled = (xyz - mn).float() / (mx - mn).clamp(min=1).float() * (target - 1) + tmin  # (N, 3)
    scaled = torch.round(scaled).clamp(min=tmin.trunc(), max=tmax.trunc())
    halved = torch.cat([coords[:, :1].long(), scaled.long()], dim=1)  # (N, 4)
    out = torch.unique(halved, dim=0).to(torch.int32)  # (M, 4), lexicographic

    # 2. Random subsample if still over the cap
    if out.shape[0] > max_coords:
        pick = torch.randperm(out.shape[0], generator=generator, device=generator.device)[:max_coords]
        out = out[pick.sort().values.to(out.device)]
    return out, 2
