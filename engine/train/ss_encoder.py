"""Sparse-structure VAE encoder (ours; the official release ships none): 64³ occupancy -> 16³×8 shape latent.

The mirror of `engine/models/ss_decoder.py`, built from its parts (`ResBlock3d`, `ChannelLayerNorm32`): an input
conv, per resolution level ResBlocks followed by a stride-2 conv that halves the grid, a middle stack of ResBlocks
and an output head [channel LayerNorm, SiLU, conv] giving the posterior's mean and log-variance per latent cell.
The decoder consumes the mean (or a sample) unchanged, so the two train together as a VAE (see `objectives.py`).

Input: occupancy (B, 1, X, Y, Z) in {0, 1} indexed [x, y, z] (engine/train/targets.py). Output: mean and logvar
(B, C_lat, X/f, Y/f, Z/f), f = 2^(levels - 1); `tokens` turns a grid into the flow's token layout
(B, res³, C_lat), token n = x·res² + y·res + z.

Shapes: B batch, C channels, X/Y/Z grid sides.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.ss_decoder import ChannelLayerNorm32, ResBlock3d


@dataclass(frozen=True)
class SSEncoderConfig:
    in_channels: int = 1  # occupancy
    latent_channels: int = 8  # channels of the shape latent (the decoder's latent_channels)
    channels: tuple[int, ...] = (16, 32, 64)  # width per level, finest first; each step between levels halves X
    num_res_blocks: int = 1  # ResBlocks per level
    num_res_blocks_middle: int = 1  # ResBlocks at the coarsest level, before the head


PRESETS: dict[str, SSEncoderConfig] = {
    "demo": SSEncoderConfig(),
    "micro": SSEncoderConfig(channels=(4, 8, 8)),  # 16³ occupancy -> 4³
}


class SSEncoder(nn.Module):
    """Occupancy (B, 1, X, Y, Z) -> (mean, logvar), each (B, C_lat, X/f, Y/f, Z/f)."""

    def __init__(self, cfg: SSEncoderConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.input_layer = nn.Conv3d(cfg.in_channels, ch[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, c in enumerate(ch):
            blocks += [ResBlock3d(c) for _ in range(cfg.num_res_blocks)]
            if i + 1 < len(ch):
                blocks.append(nn.Conv3d(c, ch[i + 1], 2, stride=2))  # halves every side
        self.blocks = nn.Sequential(*blocks)
        self.middle_block = nn.Sequential(*(ResBlock3d(ch[-1]) for _ in range(cfg.num_res_blocks_middle)))
        self.out_layer = nn.Sequential(
            ChannelLayerNorm32(ch[-1]), nn.SiLU(), nn.Conv3d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)
        )

    @property
    def factor(self) -> int:
        """Side of the occupancy grid over side of the latent grid."""
        return 2 ** (len(self.cfg.channels) - 1)

    def forward(self, occupancy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.input_layer(occupancy.to(self.input_layer.weight.dtype) * 2 - 1)  # {0, 1} -> {-1, 1}
        h = self.middle_block(self.blocks(h))  # (B, C_last, X/f, Y/f, Z/f)
        mean, logvar = self.out_layer(h).chunk(2, dim=1)  # 2 x (B, C_lat, X/f, Y/f, Z/f)
        return mean, logvar.clamp(-30.0, 20.0)


def tokens(latent: torch.Tensor) -> torch.Tensor:
    """Latent grid (B, C, r, r, r) [x, y, z] -> the flow's token layout (B, r³, C), token n = x·r² + y·r + z."""
    return latent.flatten(2).transpose(1, 2)


@torch.no_grad()
def normalize_latent_(encoder: SSEncoder, decoder: nn.Module, std: torch.Tensor) -> None:
    """Rescale the latent to unit standard deviation per channel without changing what the pair computes.

    std: (C_lat,) the standard deviation of the encoder's means. The encoder's mean outputs are divided by it (its
    log-variance shifted to match) and the decoder's input conv multiplied by it per input channel, so
    decoder(encoder mean) is unchanged and the stage-1 flow sees a latent of unit scale.
    """
    c = encoder.cfg.latent_channels
    std = std.to(encoder.out_layer[2].weight)
    conv = encoder.out_layer[2]
    conv.weight[:c] /= std.view(c, 1, 1, 1, 1)
    conv.bias[:c] /= std
    conv.bias[c:] -= 2 * torch.log(std)
    decoder.input_layer.weight *= std.to(decoder.input_layer.weight).view(1, c, 1, 1, 1)
