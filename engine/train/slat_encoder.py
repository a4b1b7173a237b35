"""SLAT encoder (ours): the 8-channel structured latent of every occupied voxel, from direct 3-D inputs.

The official encoder aggregates DINO features of many renders; ours reads the object itself. Each voxel's input
(`targets_latent.voxel_inputs`) is the signed distance at the 5³ lattice points of the mesh decoder's 4× finer
grid inside the voxel (in voxel units) and the surface colour at its 3³ half-voxel points. A sparse swin
transformer with the SLAT decoders' trunk (`engine/models/slat_decoder.py`: input layer + absolute position
embedding + windowed blocks) mixes neighbouring voxels, and a linear head gives the posterior's mean and
log-variance per voxel. The Gaussian and mesh decoders learn to decode those latents (see `train.py`).

Shapes: N voxels, C model channels, C_in input features, C_lat latent channels.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..models.norms import layer_norm32
from ..models.slat_decoder import SlatDecoderConfig, SlatDecoderTrunk
from ..sparse.tensor import SparseTensor

SDF_POINTS = 5**3  # lattice points of the 4x finer grid inside a voxel (corners included)
COLOUR_POINTS = 3**3  # half-voxel points inside a voxel (corners, edge and face centres, centre)
INPUT_CHANNELS = SDF_POINTS + 3 * COLOUR_POINTS


@dataclass(frozen=True)
class SlatEncoderConfig:
    trunk: SlatDecoderConfig = field(
        default_factory=lambda: SlatDecoderConfig(model_channels=128, num_blocks=4, num_heads=4)
    )  # the swin trunk; its latent_channels is replaced by in_channels
    in_channels: int = INPUT_CHANNELS  # C_in per voxel
    latent_channels: int = 8  # C_lat (the SLAT flow's in_channels)


PRESETS: dict[str, SlatEncoderConfig] = {
    "demo": SlatEncoderConfig(),
    "micro": SlatEncoderConfig(trunk=SlatDecoderConfig(resolution=16, model_channels=16, num_blocks=1, num_heads=2)),
}


class SlatEncoder(SlatDecoderTrunk):
    """Voxel inputs (N, C_in) -> (mean, logvar), each (N, C_lat) on the same voxels."""

    def __init__(self, cfg: SlatEncoderConfig):
        super().__init__(replace(cfg.trunk, latent_channels=cfg.in_channels))
        self.cfg = cfg
        self.out_layer = nn.Linear(cfg.trunk.model_channels, 2 * cfg.latent_channels)

    def forward(self, x: SparseTensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        out = self.out_layer(layer_norm32(h.feats, eps=1e-5).to(self.out_layer.weight.dtype))  # (N, 2 C_lat)
        mean, logvar = out.float().chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)
