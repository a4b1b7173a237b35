"""Mesh decoder output (per fine voxel) -> triangle mesh with vertex colours (the official SparseFeatures2Mesh).

Input: the mesh decoder's `out_layer` output, one row of 101 channels per occupied fine voxel at resolution R
(256 for the official model), coordinates (batch, x, y, z). Channel layout, in order (corner k of the voxel sits
at offset (k & 1, k >> 1 & 1, k >> 2 & 1), see `flexicubes.py`):

| channels | name    | shape | meaning |
|----------|---------|-------|---------|
| 0:8      | sdf     | 8     | signed distance at the 8 corners (< 0 inside); the official code adds `sdf_bias = -1/R` |
| 8:32     | deform  | 8 x 3 | corner offsets, xyz per corner (corner-major), squashed by tanh to half a voxel |
| 32:53    | weights | 21    | FlexiCubes weights of the voxel: beta 12 (per cell edge), alpha 8 (per corner), gamma 1 |
| 53:101   | color   | 8 x 6 | per corner: RGB + 3 "normal" channels (corner-major), sigmoid'd after averaging |

(Without colour the layout stops at 53.)

Steps, as the official code does them but without its dense R^3 grids:
1. Every voxel writes its 8 corner values (sdf + bias, deform, colour) onto the lattice point it shares with
   its neighbours; a lattice point takes the mean over the voxels that touch it (scatter-mean). Lattice points
   are numbered in x-major order of their coordinates (what `torch.unique` over coordinate rows gives).
2. Lattice point v in [0, R]^3 moves to v / R - 0.5 + (1 - 1e-8) / (2R) * tanh(deform): the object-local
   frame, z-up, inside [-0.5, 0.5]^3. Colours become sigmoid(mean colour).
3. FlexiCubes (`flexicubes.flexicubes`) on those points; a lattice point no voxel touches counts as outside
   (sdf +1), undeformed, colour sigmoid(0) = 0.5; a cell that is not an occupied voxel has weights 0.

Departures from the official code, with `seal_block` (the pipeline passes 4, the coarse voxel's side in fine
voxels), that make the mesh one closed outer surface:

* The grid's boundary closes it: lattice points on the boundary of [0, R]^3 are made outside (sdf at least
  +1/R). Objects are scaled to fill the grid, so their shells touch it (a sphere touches all six sides); where
  the decoder puts such a point inside, the official extraction has no cell beyond it to close the surface in,
  and leaves a hole.
* The interior that the pipeline pruned from the occupancy (`occupancy.keep_surface`) counts as inside again.
  Officially it is outside, so a second, inward surface forms where the shell meets the pruned interior (clean-up
  has to find and drop it), and wherever the decoder puts the whole thickness of the shell outside, the outer
  surface opens into that hollow: a hole through which the inside of the object shows. Here the empty coarse
  cells the voxels wall in (`occupancy.sealed_cells`) have their untouched lattice points inside, and every
  listed point on the boundary of such a cell is made inside too (sdf at most -1/R): no surface can form between
  the shell and the interior, so there is no inner wall, and where the shell was pierced the outer surface
  closes over the interior (a dent at most one coarse voxel deep) instead of opening. Half the faces, no holes.

Output: `SurfaceMesh(vertices (V, 3) float32 in the object-local frame (z-up, [-0.5, 0.5]^3), faces (F, 3) int32,
vertex_attrs (V, 6))`; vertex_attrs[:, :3] is the RGB vertex colour in [0, 1], [:, 3:] the normal-map channels.
Vertex and face order are the official ones. Memory and time scale with the number of voxels (sorts of 8 N keys).
"""
from __future__ import annotations

import torch

from .errors import InputError
from .flexicubes import CORNER_OFFSETS, SurfaceMesh, flexicubes
from .occupancy import sealed_cells
from .sparse.tensor import SparseTensor

CHANNELS = {"sdf": (0, 8), "deform": (8, 32), "weights": (32, 53), "color": (53, 101)}  # [start, stop)
CHANNELS_WITH_COLOR = 101
CHANNELS_WITHOUT_COLOR = 53
WEIGHT_SCALE = 0.99  # FlexiCubes weight_scale of the official call
SUBDIVISION = 4  # the mesh decoder's two 2x subdivisions: a coarse voxel is 4^3 fine ones (the `seal_block` to use)


def decoded_to_mesh(decoded: SparseTensor, resolution: int = 256, *, seal_block: int | None = None) -> SurfaceMesh:
    """The mesh decoder's SparseTensor (N voxels x 101 or 53 channels, one batch item) -> SurfaceMesh."""
    coords = decoded.coords
    if decoded.num_voxels and bool((coords[:, 0] != coords[0, 0]).any()):
        raise InputError("decoded_to_mesh: the voxels belong to several batch items; extract one item at a time")
    return features_to_mesh(coords[:, 1:], decoded.feats, resolution, seal_block=seal_block)


def features_to_mesh(coords: torch.Tensor, feats: torch.Tensor, resolution: int = 256, *,
                     seal_block: int | None = None) -> SurfaceMesh:  # fmt: skip
    """coords (N, 3) int unique voxels in [0, R)^3; feats (N, 101) (or (N, 53) without colour) -> SurfaceMesh.

    Computes in float32 whatever the dtype of feats. With 53 channels the mesh has no vertex_attrs. `seal_block`:
    count the interior sealed by coarse cells of this many fine voxels a side as inside (module docstring);
    None: the official extraction.
    """
    R = int(resolution)
    N, C = feats.shape[0], (feats.shape[1] if feats.ndim == 2 else -1)
    if coords.ndim != 2 or coords.shape != (N, 3) or coords.is_floating_point():
        raise InputError(
            f"features_to_mesh: coords must be an ({N}, 3) integer tensor of (x, y, z), got {tuple(coords.shape)} "
            f"{coords.dtype}"
        )
    if C not in (CHANNELS_WITH_COLOR, CHANNELS_WITHOUT_COLOR):
        raise InputError(
            f"features_to_mesh: feats must be (N, 101) (or (N, 53) without colour), got {tuple(feats.shape)}"
        )
    if N and (int(coords.min()) < 0 or int(coords.max()) >= R):
        raise InputError(
            f"features_to_mesh: voxel coordinates must lie in [0, {R - 1}] for resolution {R}; wrong resolution?"
        )
    use_color = C == CHANNELS_WITH_COLOR
    feats = feats.float()
    coords = coords.long()
    device = feats.device

    # 1. Corner lattice points of every voxel -> unique lattice points (x-major) and the corner -> point map.
    lattice = R + 1
    step = torch.tensor([(dx * lattice + dy) * lattice + dz for dx, dy, dz in CORNER_OFFSETS], device=device)  # (8,)
    voxel_keys = (coords[:, 0] * lattice + coords[:, 1]) * lattice + coords[:, 2]  # (N,) key of corner 0
    corner_keys = (voxel_keys[:, None] + step).reshape(-1)  # (N*8,) voxel-major, corner-minor
    point_keys, corner_point = torch.unique(corner_keys, return_inverse=True)  # (V,), (N*8,)
    del voxel_keys, corner_keys
    V = point_keys.shape[0]
    points = torch.stack([point_keys // lattice**2, (point_keys // lattice) % lattice, point_keys % lattice], 1)
    touches = torch.bincount(corner_point, minlength=V).to(torch.float32)[:, None]  # (V, 1) voxels per point

    def scatter_mean(name: str, width: int) -> torch.Tensor:
        start, stop = CHANNELS[name]
        per_corner = feats[:, start:stop].reshape(N * 8, width)  # (N*8, width), corner-major per voxel
        if name == "sdf":
            per_corner = per_corner + (-1.0 / R)  # the official sdf_bias, added before averaging
        summed = torch.zeros(V, width, dtype=torch.float32, device=device).index_add_(0, corner_point, per_corner)
        return summed / touches

    # 2. Per-point values and positions (object-local frame).
    sdf = scatter_mean("sdf", 1)[:, 0]  # (V,)
    deform = scatter_mean("deform", 3)  # (V, 3)
    positions = points.to(torch.float32) / R - 0.5 + (1 - 1e-8) / (R * 2) * torch.tanh(deform)  # (V, 3)
    colors = torch.sigmoid(scatter_mean("color", 6)) if use_color else None  # (V, 6)
    weights = feats[:, CHANNELS["weights"][0]:CHANNELS["weights"][1]]  # (N, 21)

    # 3. Sealing (optional): the grid's boundary outside, the sealed interior's boundary inside.
    sealed = None
    if seal_block is not None and N:
        if seal_block < 1 or R % seal_block:
            raise InputError(f"features_to_mesh: seal_block must divide the resolution {R}, got {seal_block}")
        on_grid_boundary = ((points == 0) | (points == R)).any(dim=1)
        sdf = torch.where(on_grid_boundary, sdf.clamp(min=1.0 / R), sdf)
        sealed = sealed_cells(coords, R, seal_block)  # (G, G, G); no sealed cell touches the grid's boundary
        if bool(sealed.any()):
            sdf = torch.where(_on_sealed_cell(points, sealed, seal_block), sdf.clamp(max=-1.0 / R), sdf)
        else:
            sealed = None

    # 4. FlexiCubes over the cells near the surface.
    absent_color = torch.full((6,), 0.5, device=device) if use_color else None  # sigmoid(0)
    return flexicubes(
        points, positions, sdf, coords, weights, R, colors,
        absent_sdf=1.0, absent_attrs=absent_color, absent_inside=sealed, grid_origin=-0.5, weight_scale=WEIGHT_SCALE,
    )


def _on_sealed_cell(points: torch.Tensor, sealed: torch.Tensor, block: int) -> torch.Tensor:
    """points (V, 3) lattice coordinates -> (V,) bool: the point is a corner or on a side of a sealed coarse cell."""
    g = sealed.shape[0]
    found = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for offset in CORNER_OFFSETS:  # the up to 8 coarse cells that share the point
        cell = torch.div(points - torch.tensor(offset, device=points.device), block, rounding_mode="floor")
        valid = ((cell >= 0) & (cell < g)).all(dim=1)
        cell = cell.clamp(0, g - 1)
        found |= valid & sealed[cell[:, 0], cell[:, 1], cell[:, 2]]
    return found
