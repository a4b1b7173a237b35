"""What `Pipeline.reconstruct` returns: per object a mesh, Gaussians and a pose, plus the raw stage outputs."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .assets import Gaussians, Mesh
from .pose import Pose


@dataclass
class ObjectResult:
    mask_index: int  # which of the given masks this object came from
    pose: Pose  # placement in the model (PyTorch3D) camera frame
    object_to_camera: np.ndarray  # (4, 4) float64, column vectors, object-local -> Blender/OpenGL camera frame
    mesh: Mesh | None = None  # object-local frame (z-up, [-0.5, 0.5]^3); textured after post-processing
    raw_mesh: Mesh | None = None  # the decoder's FlexiCubes mesh with vertex colours (when post-processed)
    gaussians: Gaussians | None = None
    raw: dict[str, torch.Tensor] = field(default_factory=dict)  # stage outputs for debugging (CPU tensors)

    @property
    def num_voxels(self) -> int:
        return int(self.raw["coords"].shape[0]) if "coords" in self.raw else 0


@dataclass
class ReconstructionResult:
    objects: list[ObjectResult]
    intrinsics: np.ndarray  # (3, 3) pixels, x right, y down, origin at the top-left image corner
    image_size: tuple[int, int]  # (width, height)
    pointmap_source: str  # "given" or "estimated"
    seed: int
    quality: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, summed over objects
