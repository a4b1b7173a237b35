"""Per-object ground truth: occupancy in the canonical frame, the pose in the model camera frame, colour.

* Occupancy grids are (R, R, R) indexed [x, y, z] (the model's token order), cell (i, j, k) centred at
  `(i + 0.5) / R - 0.5` etc. in the canonical frame (shapes.py). `solid`: the centre is inside the object
  (SDF <= 0). `occupancy`: the surface shell of `solid`, the cells with an empty cell (or the grid's outside)
  among their 26 neighbours — what the official SS decoder yields after `keep_surface` (spec §7), so
  `engine.occupancy.keep_surface` leaves it unchanged.
* Pose (spec §8, ARCHITECTURE §4): PyTorch3D camera frame (+X left, +Y up, +Z forward), row vectors,
  `p_cam = scale * (p_canonical @ R) + translation` with `R = quaternion_to_matrix(rotation)`, rotation a unit
  quaternion (w, x, y, z) with w >= 0, and scale the object's longest side in metres. `pose(b, k)` gives an
  `engine.pose.Pose`; its `object_to_camera()` is the same placement in the OpenGL camera frame.
* Colour: `colours` holds the object's two colour slots (equal for one colour); `canonical_albedo` gives the
  colour at any canonical point (that of the nearest part's colour rule).

Letters: B scenes, K objects, P parts, N points.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..frames import opengl_to_p3d
from ..pose import Pose, matrix_to_quaternion
from .scenes import SceneBatch
from .shapes import sdf_by_kind


@dataclass
class Targets:
    occupancy: torch.Tensor  # (B, K, R, R, R) bool, surface shell
    solid: torch.Tensor  # (B, K, R, R, R) bool, inside
    rotation: torch.Tensor  # (B, K, 4) quaternion (w, x, y, z), w >= 0
    rotation_matrix: torch.Tensor  # (B, K, 3, 3) R of p @ R
    translation: torch.Tensor  # (B, K, 3) PyTorch3D camera frame, metres
    scale: torch.Tensor  # (B, K) metres
    colours: torch.Tensor  # (B, K, 2, 3) RGB in [0, 1] of the colour slots
    valid: torch.Tensor  # (B, K) bool, False for padding
    names: list[list[str]]  # shape name of each object

    def pose(self, b: int, k: int) -> Pose:
        return Pose(self.rotation[b, k], self.translation[b, k], float(self.scale[b, k]))


def object_targets(scenes: SceneBatch, resolution: int = 64, budget: int = 1 << 24) -> Targets:
    """Ground truth of every object of every scene. `budget` bounds the (part, point) pairs evaluated at once."""
    rotation, rotation_matrix, translation = object_poses(scenes)
    centres = voxel_centres(resolution, scenes.part_params.dtype, scenes.device).reshape(-1, 3)  # (R^3, 3)
    chunk = max(1024, budget // scenes.part_object.numel())
    solid = torch.cat([canonical_sdf(scenes, centres[i : i + chunk]) <= 0 for i in range(0, len(centres), chunk)], -1)
    num_b, num_k = solid.shape[:2]
    solid = solid.reshape(num_b, num_k, resolution, resolution, resolution) & scenes.object_valid[..., None, None, None]
    return Targets(
        occupancy=surface_shell(solid),
        solid=solid,
        rotation=rotation,
        rotation_matrix=rotation_matrix,
        translation=translation,
        scale=scenes.object_scale.clone(),
        colours=scenes.object_colours.clone(),
        valid=scenes.object_valid.clone(),
        names=[[o.shape.name for o in s.objects] for s in scenes.scenes],
    )


def object_poses(scenes: SceneBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quaternion (B, K, 4), R (B, K, 3, 3), translation (B, K, 3) of each object in the model camera frame."""
    cam_rot = scenes.camera_to_world[:, None, :3, :3]  # (B, 1, 3, 3) world-from-camera, OpenGL
    eye = scenes.camera_to_world[:, None, :3, 3]  # (B, 1, 3)
    # OpenGL camera from canonical (column vectors): cam_rot^T @ object_rotation; rows of p @ R are its transpose.
    gl_from_object = cam_rot.transpose(-1, -2) @ scenes.object_rotation  # (B, K, 3, 3)
    rotation_matrix = opengl_to_p3d(gl_from_object.transpose(-1, -2))  # flips columns 0 and 2 of the row form
    position_gl = ((scenes.object_position - eye)[..., None, :] @ cam_rot)[..., 0, :]  # (B, K, 3)
    return matrix_to_quaternion(rotation_matrix), rotation_matrix, opengl_to_p3d(position_gl)


def voxel_centres(resolution: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(R, R, R, 3) canonical coordinates of the cell centres, indexed [x, y, z]."""
    axis = (torch.arange(resolution, dtype=dtype, device=device) + 0.5) / resolution - 0.5
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


def surface_shell(solid: torch.Tensor) -> torch.Tensor:
    """(..., X, Y, Z) bool -> the cells of `solid` with an empty cell among their 26 neighbours (outside = empty)."""
    shape = solid.shape
    grid = solid.reshape(-1, 1, *shape[-3:]).float()
    empty = F.pad(1.0 - grid, (1, 1, 1, 1, 1, 1), value=1.0)
    near_empty = F.max_pool3d(empty, kernel_size=3, stride=1) > 0  # (N, 1, X, Y, Z)
    return solid & near_empty.reshape(shape)


def canonical_sdf(scenes: SceneBatch, points: torch.Tensor) -> torch.Tensor:
    """Signed distance (canonical units) of canonical points to each object: points (N, 3) for all objects or
    (B, K, N, 3) per object -> (B, K, N); +inf for padding objects."""
    part_sdf, _ = _part_sdf(scenes, points)  # (B, P, N)
    num_b, num_k = scenes.object_valid.shape
    owner = scenes.part_object.clamp_min(-1) % (num_k + 1)  # padding -> slot K (dropped)
    out = torch.full((num_b, num_k + 1, part_sdf.shape[-1]), float("inf"), dtype=part_sdf.dtype, device=part_sdf.device)
    out.scatter_reduce_(1, owner[..., None].expand_as(part_sdf), part_sdf, reduce="amin")
    return out[:, :num_k]


def canonical_albedo(scenes: SceneBatch, points: torch.Tensor) -> torch.Tensor:
    """Colour (RGB) of each object at canonical points, by the colour rule of the nearest part of that object:
    points (N, 3) or (B, K, N, 3) -> (B, K, N, 3)."""
    part_sdf, local = _part_sdf(scenes, points)  # (B, P, N), (B, P, N, 3)
    num_k = scenes.object_valid.shape[1]
    mine = scenes.part_object[:, None, :] == torch.arange(num_k, device=scenes.device)[None, :, None]  # (B, K, P)
    nearest = torch.where(mine[..., None], part_sdf[:, None], float("inf")).argmin(2)  # (B, K, N)
    z = torch.gather(local[..., 2], 1, nearest)  # (B, K, N) part-local height
    split = torch.gather(scenes.part_split, 1, nearest.flatten(1)).view_as(nearest)
    colour = torch.gather(
        scenes.part_colour.flatten(2), 1, nearest.flatten(1)[..., None].expand(-1, -1, 6)
    ).view(*nearest.shape, 2, 3)  # (B, K, N, 2, 3)
    return torch.where((z > split)[..., None], colour[..., 1, :], colour[..., 0, :])


def _part_sdf(scenes: SceneBatch, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each part evaluated at its own object's points: (B, P, N) distances and (B, P, N, 3) part-local points."""
    num_b, num_p = scenes.part_object.shape
    if points.dim() == 2:
        pts = points[None, None]  # (1, 1, N, 3)
    else:
        owner = scenes.part_object.clamp_min(0)
        pts = torch.gather(points, 1, owner[:, :, None, None].expand(-1, -1, *points.shape[2:]))  # (B, P, N, 3)
    rel = pts - scenes.part_offset[:, :, None, :]  # (B, P, N, 3)
    local = rel @ scenes.part_rotation  # R^T (p - o) in row form: (B, P, N, 3)
    kind = scenes.part_kind.masked_fill(scenes.part_object < 0, -1)  # padding: neither formula
    d = sdf_by_kind(local.flatten(0, 1), kind.flatten(), scenes.part_params.flatten(0, 1))
    d = d.view(num_b, num_p, -1)  # (B, P, N)
    return torch.where(scenes.part_object[..., None] >= 0, d, float("inf")), local
