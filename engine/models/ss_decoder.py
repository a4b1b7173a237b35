"""Sparse-structure VAE decoder: the 16³×8 shape latent -> 64³ occupancy logits (dense 3D convolutions).

Upstream `SparseStructureDecoderTdfyWrapper` (spec §7): input conv, a middle stack of ResBlocks, then per
resolution level ResBlocks followed by a conv + 3-D pixel-shuffle ×2 up-sampling, and an output head
[channel LayerNorm, SiLU, conv]. Channel LayerNorms (affine, eps 1e-5) run in float32; each conv runs in its
own weight's dtype (the released file stores the block convs in fp16 and the rest in fp32).

Input: the shape latent either in the generator's token layout (B, res³, C_lat) with token n = x·res² + y·res + z,
or already as a grid (B, C_lat, res, res, res) indexed [x, y, z]. Output: logits (B, C_out, 4·res, 4·res, 4·res).

Shapes: B batch, C channels, X/Y/Z grid sides.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .norms import LayerNorm32


@dataclass(frozen=True)
class SSDecoderConfig:
    latent_channels: int = 8  # channels of the shape latent
    out_channels: int = 1  # occupancy logits
    channels: tuple[int, ...] = (512, 128, 32)  # width per level; each step between levels up-samples ×2
    num_res_blocks: int = 2  # ResBlocks per level
    num_res_blocks_middle: int = 2  # ResBlocks right after the input conv
    resolution: int = 16  # side of the latent grid (the token layout has resolution³ tokens)


PRESETS: dict[str, SSDecoderConfig] = {
    "official": SSDecoderConfig(),
    "tiny": SSDecoderConfig(channels=(12, 8, 8)),
}


class SSDecoder(nn.Module):
    """Shape latent (tokens or grid, see module docstring) -> logits (B, C_out, X, Y, Z), X = res·2^(levels − 1)."""

    def __init__(self, cfg: SSDecoderConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.input_layer = nn.Conv3d(cfg.latent_channels, ch[0], 3, padding=1)
        self.middle_block = nn.Sequential(*(ResBlock3d(ch[0]) for _ in range(cfg.num_res_blocks_middle)))
        blocks: list[nn.Module] = []
        for i, c in enumerate(ch):
            blocks += [ResBlock3d(c) for _ in range(cfg.num_res_blocks)]
            if i + 1 < len(ch):
                blocks.append(UpsampleBlock3d(c, ch[i + 1]))
        self.blocks = nn.Sequential(*blocks)
        self.out_layer = nn.Sequential(
            ChannelLayerNorm32(ch[-1]), nn.SiLU(), nn.Conv3d(ch[-1], cfg.out_channels, 3, padding=1)
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        # 1. Token layout -> grid
        if latent.dim() == 3:
            b, n, c = latent.shape
            r = self.cfg.resolution
            if n != r**3:
                raise ValueError(f"SSDecoder expects {r}³ = {r**3} latent tokens, got {n}")
            latent = latent.transpose(1, 2).reshape(b, c, r, r, r)  # (B, C_lat, X, Y, Z)

        # 2. Trunk
        h = _conv(self.input_layer, latent)  # (B, C0, X, Y, Z)
        h = self.middle_block(h)
        h = self.blocks(h)  # (B, C_last, 4X, 4Y, 4Z) for three levels

        # 3. Head
        norm, act, conv = self.out_layer
        return _conv(conv, act(norm(h)))  # (B, C_out, 4X, 4Y, 4Z)


class ResBlock3d(nn.Module):
    """x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm32(channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = ChannelLayerNorm32(channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _conv(self.conv1, F.silu(self.norm1(x)))
        h = _conv(self.conv2, F.silu(self.norm2(h)))
        return x + h.to(x.dtype)


class UpsampleBlock3d(nn.Module):
    """Conv3d(C_in -> 8·C_out) then 3-D pixel shuffle: channel c·8 + 4i + 2j + k goes to offset (i, j, k)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _conv(self.conv, x)  # (B, 8C, X, Y, Z)
        b, c8, x_, y_, z_ = h.shape
        h = h.reshape(b, c8 // 8, 2, 2, 2, x_, y_, z_)  # (B, C, i, j, k, X, Y, Z)
        h = h.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C, X, i, Y, j, Z, k)
        return h.reshape(b, c8 // 8, 2 * x_, 2 * y_, 2 * z_)  # (B, C, 2X, 2Y, 2Z)


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm over the channel dim of (B, C, X, Y, Z), affine, eps 1e-5, in float32; returns the input dtype."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)  # (B, X, Y, Z, C) -> (B, C, X, Y, Z)


def _conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Run `conv` in its weight's dtype."""
    return conv(x.to(conv.weight.dtype))
