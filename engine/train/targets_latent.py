"""Data-engine ground truth (`targets.py`) -> what the networks are trained to produce.

* Pose (stage 1): the four pose modalities in the units the pipeline decodes (`engine/pose.py` `decode_pose`):
  `6drotation_normalized` = the first two columns of R, normalised by ROTATION_6D_MEAN / STD; `translation` =
  (t − shift) / scale in SSI units; `scale` = log(object scale / SSI scale) on all three axes; and
  `translation_scale` = log |translation| (unused by the decoder). shift and scale are the pointmap normalisation
  of the object, computed exactly as preprocessing does (`model_inputs.ssi_scale_shift`).
* Shape (stage 1): the SS encoder's posterior mean of the object's solid occupancy, in token layout.
* Structured latent (stage 2, decoders): per occupied voxel, the signed distance and colour of the object at the
  lattice points of the mesh decoder's 4× finer grid inside the voxel (`lattice_points`, `object_fields`); the
  SLAT encoder's inputs (`voxel_inputs`), the mesh decoder's per-corner targets (`mesh_targets`) and the nearest
  surface points for the Gaussian decoder (`surface_points`) are read off them.

Canonical (object) frame as in `shapes.py`: z up, bounding box centred, longest side 1; voxel (i, j, k) of an
R³ grid is centred at (i + 0.5) / R − 0.5. Letters: Q objects, N voxels, M points per voxel, F fine voxels,
R grid side, B scenes, K objects per scene, P parts.
"""
from __future__ import annotations

import itertools
import math

import torch

from ..flexicubes import CORNER_OFFSETS
from ..pose import ROTATION_6D_MEAN, ROTATION_6D_STD
from .scenes import SceneBatch
from .shapes import primitive_sdf
from .ss_encoder import SSEncoder, tokens

SUBDIVISION = 4  # the mesh decoder's grid is 4x finer than the voxels (two 2x subdivisions)
LATTICE = SUBDIVISION + 1  # lattice points per axis inside one voxel, corners included
COLOUR_STRIDE = 2  # colour inputs every other lattice point: 3³ per voxel
SDF_INPUT_CLAMP = 3.0  # voxel units


# ---- stage 1 ---------------------------------------------------------------------------------------------------


def pose_latents(
    rotation_matrix: torch.Tensor,
    translation: torch.Tensor,
    scale: torch.Tensor,
    pointmap_scale: torch.Tensor,
    pointmap_shift: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """R (Q, 3, 3) of `p @ R`, translation (Q, 3) and scale (Q,) in the PyTorch3D camera frame, the SSI scale (Q,)
    and shift (Q, 3) -> {modality: (Q, 1, channels)} as the stage-1 flow produces them."""
    r6 = torch.cat([rotation_matrix[..., :, 0], rotation_matrix[..., :, 1]], dim=-1)  # (Q, 6): columns b1, b2
    mean = torch.tensor(ROTATION_6D_MEAN, device=r6.device, dtype=r6.dtype)
    std = torch.tensor(ROTATION_6D_STD, device=r6.device, dtype=r6.dtype)
    t_ssi = (translation - pointmap_shift) / pointmap_scale[:, None]  # (Q, 3)
    log_scale = torch.log(scale / pointmap_scale)[:, None].expand(-1, 3)  # (Q, 3)
    return {
        "6drotation_normalized": ((r6 - mean) / std)[:, None],
        "translation": t_ssi[:, None],
        "scale": log_scale[:, None],
        "translation_scale": torch.log(t_ssi.norm(dim=-1).clamp_min(1e-6))[:, None, None],
    }


@torch.no_grad()
def shape_latents(encoder: SSEncoder, solid: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """solid (Q, R, R, R) bool -> the encoder's posterior means in token layout (Q, r³, C_lat), float32."""
    out = []
    for start in range(0, solid.shape[0], chunk):
        mean, _ = encoder(solid[start : start + chunk, None].float())
        out.append(tokens(mean).float())
    return torch.cat(out)


# ---- structured latent -----------------------------------------------------------------------------------------


def voxel_coords(occupancy: torch.Tensor) -> torch.Tensor:
    """(Q, R, R, R) bool -> (N, 4) int32 rows (object, x, y, z), lexicographic (a SparseTensor's coords)."""
    return torch.nonzero(occupancy).to(torch.int32)


def lattice_points(xyz: torch.Tensor, resolution: int, stride: int = 1) -> torch.Tensor:
    """Voxel coords (N, 3) of an R³ grid -> canonical positions (N, M, 3) of the 4R-grid lattice points inside each
    voxel, every `stride`-th per axis (M = 5³ for stride 1), ordered x-major: index (i·L + j)·L + l."""
    steps = torch.arange(0, LATTICE, stride, device=xyz.device)
    offsets = torch.tensor(list(itertools.product(steps.tolist(), repeat=3)), device=xyz.device)  # (M, 3)
    fine = xyz.long()[:, None, :] * SUBDIVISION + offsets[None]  # (N, M, 3) lattice coordinates
    return fine.float() / (SUBDIVISION * resolution) - 0.5


def object_fields(
    scenes: SceneBatch, scene: torch.Tensor, obj: torch.Tensor, points: torch.Tensor, chunk: int = 1 << 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed distance (canonical units, < 0 inside) and colour of object `obj` of scene `scene` at canonical
    points: scene, obj (N,) int64, points (N, M, 3) -> sdf (N, M), albedo (N, M, 3).

    The colour is that of the object's part nearest the point, by that part's colour rule (as
    `targets.canonical_albedo`). Differentiable in `points`; evaluated in chunks of about `chunk` points."""
    num_k = scenes.object_valid.shape[1]
    mine = scenes.part_object[:, None, :] == torch.arange(num_k, device=scenes.device)[None, :, None]  # (B, K, P)
    most = max(1, int(mine.sum(-1).max()))
    slots = torch.argsort((~mine).to(torch.uint8), dim=-1, stable=True)[..., :most]  # (B, K, Pk): own parts first
    slot_ok = torch.gather(mine, 2, slots)  # (B, K, Pk)
    sdf_parts, albedo_parts = [], []
    rows = max(1, chunk // max(1, points.shape[1] * most))
    for start in range(0, points.shape[0], rows):
        b, k, p = scene[start : start + rows], obj[start : start + rows], points[start : start + rows]
        part, ok = slots[b, k], slot_ok[b, k]  # (n, Pk)
        bb = b[:, None].expand_as(part)
        rotation = scenes.part_rotation[bb, part]  # (n, Pk, 3, 3) canonical-from-part
        local = (p[:, None] - scenes.part_offset[bb, part][:, :, None]) @ rotation  # (n, Pk, M, 3) R^T (p - o)
        d = primitive_sdf(local, scenes.part_kind[bb, part][..., None], scenes.part_params[bb, part][:, :, None])
        d = torch.where(ok[..., None], d, math.inf)  # (n, Pk, M)
        sdf, nearest = d.min(dim=1)  # (n, M)
        z = torch.gather(local[..., 2], 1, nearest[:, None]).squeeze(1)  # (n, M) part-local height
        split = torch.gather(scenes.part_split[bb, part], 1, nearest)  # (n, M)
        colours = scenes.part_colour[bb, part]  # (n, Pk, 2, 3)
        colour = torch.gather(colours, 1, nearest[..., None, None].expand(-1, -1, 2, 3))  # (n, M, 2, 3)
        albedo = torch.where((z > split)[..., None], colour[:, :, 1], colour[:, :, 0])  # (n, M, 3)
        sdf_parts.append(sdf)
        albedo_parts.append(albedo)
    return torch.cat(sdf_parts), torch.cat(albedo_parts)


def voxel_inputs(sdf: torch.Tensor, albedo: torch.Tensor, resolution: int) -> torch.Tensor:
    """The SLAT encoder's input per voxel from the fields at its 5³ lattice points (sdf (N, 125), albedo
    (N, 125, 3)): the sdf in voxel units (clamped to ±3) and the colour at the 3³ half-voxel points in [−1, 1]."""
    n = sdf.shape[0]
    sub = torch.arange(0, LATTICE, COLOUR_STRIDE, device=sdf.device)
    index = ((sub[:, None, None] * LATTICE + sub[None, :, None]) * LATTICE + sub[None, None, :]).reshape(-1)  # (27,)
    sdf_in = (sdf * resolution).clamp(-SDF_INPUT_CLAMP, SDF_INPUT_CLAMP)  # (N, 125)
    colour_in = albedo[:, index].reshape(n, -1) * 2 - 1  # (N, 81)
    return torch.cat([sdf_in, colour_in], dim=1)


def mesh_targets(
    fine_coords: torch.Tensor, coords: torch.Tensor, sdf: torch.Tensor, albedo: torch.Tensor, resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per fine voxel of the mesh decoder's output and its 8 corners (`flexicubes.CORNER_OFFSETS` order): the sdf
    the decoder must output and the corner colour.

    fine_coords (F, 4) at 4R, F = 64 N, row r a descendant of voxel r // 64 (subdivision is parent-major); coords
    (N, 4) the voxels; sdf (N, 125), albedo (N, 125, 3) at their lattice points. The sdf target includes +1/(4R),
    which cancels the sdf_bias −1/(4R) mesh extraction adds (`mesh_extraction.py`). Returns (F, 8), (F, 8, 3)."""
    parent = torch.arange(fine_coords.shape[0], device=fine_coords.device) // SUBDIVISION**3  # (F,)
    offset = fine_coords[:, 1:].long() - SUBDIVISION * coords[parent, 1:].long()  # (F, 3) in [0, 4)
    corner = torch.tensor(CORNER_OFFSETS, device=offset.device)  # (8, 3)
    lattice = offset[:, None, :] + corner[None]  # (F, 8, 3) in [0, 5)
    index = (lattice[..., 0] * LATTICE + lattice[..., 1]) * LATTICE + lattice[..., 2]  # (F, 8)
    fine_sdf = sdf[parent[:, None], index] + 1.0 / (SUBDIVISION * resolution)
    return fine_sdf, albedo[parent[:, None], index]


def surface_points(
    scenes: SceneBatch, scene: torch.Tensor, obj: torch.Tensor, points: torch.Tensor, step: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest surface point of the object to each point (one Newton step along the sdf gradient, by central
    differences) and the colour there: points (N, M, 3) -> (N, M, 3), (N, M, 3). No gradient flows."""
    with torch.no_grad():
        sdf, _ = object_fields(scenes, scene, obj, points)
        grad = []
        for axis in range(3):
            delta = torch.zeros(3, device=points.device)
            delta[axis] = step
            plus, _ = object_fields(scenes, scene, obj, points + delta)
            minus, _ = object_fields(scenes, scene, obj, points - delta)
            grad.append((plus - minus) / (2 * step))
        normal = torch.stack(grad, dim=-1)  # (N, M, 3)
        normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        surface = points - sdf[..., None] * normal
        _, albedo = object_fields(scenes, scene, obj, surface)
    return surface, albedo
