"""Pose decoding (stage-1 pose tokens -> rotation, translation, uniform scale) and the one frame conversion.

Frames (ARCHITECTURE §4):
- object-local: z-up, object inside [-0.5, 0.5]^3 (meshes and Gaussians from the decoders);
- model camera (what SAM 3D predicts): PyTorch3D camera, +X left, +Y up, +Z forward, row vectors:
  `p_cam = scale * (p_local @ R) + translation`;
- engine API camera: Blender/OpenGL camera, +X right, +Y up, looking down -Z. The model frame becomes the
  OpenGL frame by diag(-1, 1, -1) applied after the pose; `object_to_camera` is the 4x4 column-vector matrix
  in that frame. `blender matrix_world = camera.matrix_world @ object_to_camera`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .frames import p3d_to_opengl

# Statistics of the 6D rotation targets the official model was trained on (pipeline/inference_utils.py).
ROTATION_6D_MEAN = (
    -0.06366084516048431, 0.008438224904239178, 0.00017084786668419838,
    0.0007126610726118088, -0.003091672668233514, 0.5166093707084656,
)  # fmt: skip
ROTATION_6D_STD = (
    0.6656972169876099, 0.6787012219429016, 0.3034501075744629,
    0.4394504427909851, 0.3981797397136688, 0.6176286935806274,
)  # fmt: skip



@dataclass
class Pose:
    """An object's placement in the model camera frame (PyTorch3D), as the official pose decoder gives it."""

    rotation: torch.Tensor  # (4,) quaternion (w, x, y, z), w >= 0
    translation: torch.Tensor  # (3,)
    scale: float  # uniform

    @property
    def rotation_matrix(self) -> torch.Tensor:
        """R with `p_cam = scale * (p_local @ R) + translation` (row vectors)."""
        return quaternion_to_matrix(self.rotation)

    def transform_points(self, points_local: torch.Tensor) -> torch.Tensor:
        """(..., 3) object-local -> model camera frame."""
        return self.scale * (points_local @ self.rotation_matrix.to(points_local.dtype)) + self.translation.to(
            points_local.dtype
        )

    def object_to_camera(self) -> torch.Tensor:
        """4x4 float64, column vectors, object-local -> Blender/OpenGL camera frame."""
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = self.scale * self.rotation_matrix.double().T
        m[:3, 3] = self.translation.double()
        m[:3, :] = p3d_to_opengl(m[:3, :].T).T  # rows x and z change sign
        return m


def decode_pose(
    raw: dict[str, torch.Tensor],
    pointmap_scale: torch.Tensor,
    pointmap_shift: torch.Tensor,
    downsample_factor: float = 1.0,
) -> Pose:
    """Stage-1 pose latents (batch 1) -> Pose, undoing the object-centric pointmap normalisation.

    raw: "6drotation_normalized" (1,1,6), "translation" (1,1,3), "scale" (1,1,3) (log-scale); the fourth
    modality, "translation_scale", is unused by this convention. pointmap_scale/shift: (1, 3).
    The voxel cap's `downsample_factor` multiplies the scale.
    """
    r6 = raw["6drotation_normalized"].reshape(6).float()
    r6 = r6 * torch.tensor(ROTATION_6D_STD) + torch.tensor(ROTATION_6D_MEAN)
    rotation = matrix_to_quaternion(rotation_6d_to_matrix(r6))
    scene_scale = pointmap_scale.reshape(3).float()
    scene_shift = pointmap_shift.reshape(3).float()
    scales = torch.exp(raw["scale"].reshape(3).float()) * scene_scale
    translation = raw["translation"].reshape(3).float() * scene_scale + scene_shift
    return Pose(rotation, translation, float(scales.mean()) * downsample_factor)


# ---- rotation helpers ------------------------------------------------------------------------------------------


def rotation_6d_to_matrix(r6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt; the matrix's columns are b1, b2, b3 = b1 x b2."""
    a1, a2 = r6[..., :3], r6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) (w, x, y, z), any norm -> (..., 3, 3) rotation matrix (PyTorch3D convention)."""
    w, x, y, z = q.unbind(-1)
    two_s = 2.0 / (q * q).sum(-1)
    m = torch.stack(
        [
            1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
            two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
            two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
        ],
        dim=-1,
    )  # fmt: skip
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation -> (..., 4) unit quaternion (w, x, y, z) with w >= 0.

    Of the four algebraically equal candidates, the one built on the largest of 1+-m00+-m11+-m22 is used
    (best conditioned).
    """
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    r = torch.sqrt(sq.clamp_min(0.0))  # (..., 4): 2|w|, 2|x|, 2|y|, 2|z|
    candidates = torch.stack(
        [
            torch.stack([r[..., 0] ** 2, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], r[..., 1] ** 2, m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], r[..., 2] ** 2, m[..., 2, 1] + m[..., 1, 2]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 2, 0] + m[..., 0, 2], m[..., 2, 1] + m[..., 1, 2], r[..., 3] ** 2], -1),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4)
    candidates = candidates / (2.0 * r[..., :, None].clamp_min(0.1))
    best = sq.argmax(dim=-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return torch.where(q[..., :1] < 0, -q, q)
