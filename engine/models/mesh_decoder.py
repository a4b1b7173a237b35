"""SLAT mesh decoder network: structured latent -> 101 FlexiCubes channels per voxel of a 4x finer grid.

Official checkpoint: `slat_decoder_mesh.ckpt` (raw state dict, no prefix): the trunk keys of `slat_decoder.py`,
`upsample.{0,1}.{act_layers.0, out_layers.0.conv, out_layers.1, out_layers.3.conv, skip_connection.conv}`,
`out_layer` (101, C/8). The mesh extraction (FlexiCubes) is not here: see `engine/mesh_extraction.py`, which
owns the channel layout (`CHANNELS`).

Shapes: N voxels at resolution R, C model channels.

    h = trunk(x)                                    (N, C)       at R
    h = upsample[0](h)                              (8N, C/4)    at 2R
    h = upsample[1](h)                              (64N, C/8)   at 4R
    out = out_layer(h)                              (64N, 101)   no final norm
Subdivide block: h = SiLU(GN(x)); subdivide h and x (every voxel -> 8 children, parent-major, children
(0,0,0), (0,0,1), (0,1,0), ... at 2c + offset); h = conv3(SiLU(GN(conv3(h)))); out = h + conv1(x), where the
1x1x1 skip conv follows spconv's quirk (see `engine/sparse/conv.py`). GroupNorms: 32 groups officially.
Output channels per fine voxel: sdf 0:8 (one per cube corner), deform 8:32 (8x3), weights 32:53
(beta 12, alpha 8, gamma 1), colour 53:101 (8x6).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import nn

from ..sparse.conv import SparseConv3d
from ..sparse.norm import SparseGroupNorm
from ..sparse.resample import subdivide
from ..sparse.tensor import SparseTensor
from .slat_decoder import PRESETS as TRUNK_PRESETS
from .slat_decoder import SlatDecoderConfig, SlatDecoderTrunk


@dataclass(frozen=True)
class MeshDecoderConfig:
    trunk: SlatDecoderConfig = field(default_factory=SlatDecoderConfig)  # shared swin trunk
    groupnorm_groups: int = 32  # GroupNorm groups in both subdivide blocks (a code default, not in the YAML)
    out_channels: int = 101  # FlexiCubes features per fine voxel (with colour)

    @property
    def upsample_channels(self) -> tuple[int, int]:  # widths after the two subdivide blocks: C/4, C/8
        return self.trunk.model_channels // 4, self.trunk.model_channels // 8


PRESETS: dict[str, MeshDecoderConfig] = {
    "official": MeshDecoderConfig(),
    "tiny": MeshDecoderConfig(trunk=TRUNK_PRESETS["tiny"], groupnorm_groups=4),
}


class MeshDecoder(SlatDecoderTrunk):
    def __init__(self, cfg: MeshDecoderConfig):
        super().__init__(cfg.trunk)
        self.cfg = cfg
        c = cfg.trunk.model_channels
        c1, c2 = cfg.upsample_channels
        self.upsample = nn.ModuleList([
            SubdivideBlock(c, c1, cfg.groupnorm_groups),
            SubdivideBlock(c1, c2, cfg.groupnorm_groups),
        ])
        self.out_layer = nn.Linear(c2, cfg.out_channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        """x: latent feats (N, latent_channels) at R -> (64N, 101) on coords at 4R, in x's dtype."""
        h = self.trunk(x)
        for block in self.upsample:
            h = block(h)
        return h.replace(self.out_layer(h.feats.to(self.out_layer.weight.dtype)).to(x.dtype))


class SubdivideBlock(nn.Module):
    """GN -> SiLU -> subdivide -> conv3 -> GN -> SiLU -> conv3, + 1x1 conv skip of the subdivided input."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.act_layers = nn.Sequential(SparseGroupNorm(groups, in_channels), nn.SiLU())
        self.out_layers = nn.Sequential(
            SparseConv3d(in_channels, out_channels, 3),
            SparseGroupNorm(groups, out_channels),
            nn.SiLU(),
            SparseConv3d(out_channels, out_channels, 3),
        )
        self.skip_connection = (
            SparseConv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.act_layers[0](x)
        h = subdivide(h.replace(F.silu(h.feats)))  # (8N, Ci)
        x = subdivide(x)
        h = self.out_layers[0](h)
        h = self.out_layers[1](h)
        h = self.out_layers[3](h.replace(F.silu(h.feats)))
        skip = self.skip_connection(x)
        return h.replace(h.feats + skip.feats)
