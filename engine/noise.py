"""Initial noise for the two samplers: drawn from a seeded generator in the official order, or injected.

The official pipeline draws stage-1 noise with the modalities in sorted key order (its tree-map sorts dict keys),
then stage-2 noise from the same stream. Given the same generator state, ours draws the same numbers.
"""
from __future__ import annotations

import torch

from .errors import InputError


def stage1_shapes(resolution: int, latent_channels: int) -> dict[str, tuple[int, ...]]:
    return {
        "6drotation_normalized": (1, 1, 6),
        "scale": (1, 1, 3),
        "shape": (1, resolution**3, latent_channels),
        "translation": (1, 1, 3),
        "translation_scale": (1, 1, 1),
    }


def draw_stage1(shapes: dict[str, tuple[int, ...]], generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.randn(shapes[k], generator=generator, device=device) for k in sorted(shapes)}


def draw_stage2(num_voxels: int, channels: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn((1, num_voxels, channels), generator=generator, device=device)


def check_stage1(noise: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Validate injected stage-1 noise: every modality present with its exact shape."""
    missing = sorted(set(shapes) - set(noise))
    if missing:
        raise InputError(f"injected stage-1 noise lacks {', '.join(missing)}; give every modality of {sorted(shapes)}")
    for k, shape in shapes.items():
        if tuple(noise[k].shape) != shape:
            raise InputError(f"injected stage-1 noise '{k}' has shape {tuple(noise[k].shape)}, expected {shape}")
    return {k: noise[k].float() for k in sorted(shapes)}


def check_stage2(noise: torch.Tensor, num_voxels: int, channels: int) -> torch.Tensor:
    if tuple(noise.shape) != (1, num_voxels, channels):
        raise InputError(
            f"injected stage-2 noise has shape {tuple(noise.shape)} but stage 1 gave {num_voxels} voxels; "
            f"expected (1, {num_voxels}, {channels}) — was it recorded with the same weights and seed?"
        )
    return noise.float()
