"""PointPatchEmbed: the pointmap condition encoder of stage 1 (upstream `embedder/pointmap.py`).

1. Resize the pointmap (nearest) to input_size²; a pixel is valid when all three coordinates are finite.
2. `point_proj` each valid xyz; invalid pixels get the learnt `invalid_xyz_token` instead.
3. Cut into patch_size² windows; per window prepend `cls_token`, add `pos_embed_window`, run one ViT block
   (16 heads, mlp ratio 2, no LayerScale) over the window's 1 + P² tokens.
4. Keep each window's cls token and add `pos_embed` (one per window) -> G² tokens in row-major (y, x) order.
The official `remap_output="linear"` is the identity.

Shapes: B batch, H/W pointmap size, S = input_size, P = patch_size (window side), G = S / P windows per side,
C channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .dino import TransformerBlock


@dataclass(frozen=True)
class PointPatchEmbedConfig:
    embed_dim: int = 512  # C
    input_size: int = 256  # px; pointmaps are resized (nearest) to input_size²
    patch_size: int = 8  # px; window side P
    num_heads: int = 16  # heads of the window block (hard-coded upstream)
    mlp_ratio: float = 2.0  # window block MLP hidden = C * mlp_ratio
    norm_eps: float = 1e-6  # window block LayerNorms

    def __post_init__(self) -> None:
        if self.input_size % self.patch_size:
            raise ValueError(
                f"PointPatchEmbedConfig: input_size {self.input_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"PointPatchEmbedConfig: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )

    @property
    def grid_size(self) -> int:
        """G: windows per side."""
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Output tokens: one per window."""
        return self.grid_size**2


PRESETS: dict[str, PointPatchEmbedConfig] = {
    "official": PointPatchEmbedConfig(),
    # official_format_tiny/ss_generator.yaml: embed_dim 16, input_size 48, patch_size 8 (6 x 6 windows).
    "tiny": PointPatchEmbedConfig(embed_dim=16, input_size=48, patch_size=8),
}


class PointPatchEmbed(nn.Module):
    def __init__(self, cfg: PointPatchEmbedConfig):
        super().__init__()
        self.cfg = cfg
        c, p, g = cfg.embed_dim, cfg.patch_size, cfg.grid_size
        self.invalid_xyz_token = nn.Parameter(torch.zeros(c))
        self.pos_embed = nn.Parameter(torch.zeros(1, c, g, g))  # one per window
        self.pos_embed_window = nn.Parameter(torch.zeros(1, 1 + p * p, c))  # window cls + P² pixels
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.point_proj = nn.Linear(3, c)
        self.blocks = nn.ModuleList(
            [TransformerBlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, layer_scale=False)]
        )

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """xyz: (B, 3, H, W) pointmap, non-finite = invalid -> (B, G², C)."""
        points, valid = self.resize(xyz)
        return self.pool_windows(self.embed_points(points, valid))

    def resize(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> resized points (B, S, S, 3) float32 (invalid values kept), valid mask (B, S, S) bool."""
        if xyz.ndim != 4 or xyz.shape[1] != 3:
            raise InputError(f"PointPatchEmbed expects a pointmap of shape (B, 3, H, W), got {tuple(xyz.shape)}")
        s = self.cfg.input_size
        points = F.interpolate(xyz.float(), size=(s, s), mode="nearest").permute(0, 2, 3, 1)  # (B, S, S, 3)
        return points, torch.isfinite(points).all(dim=-1)

    def embed_points(self, points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3), (B, S, S) -> per-pixel embeddings (B, S, S, C); invalid pixels = invalid_xyz_token."""
        dtype = self.point_proj.weight.dtype
        points = torch.where(valid[..., None], points, 0.0)
        emb = self.point_proj(points.to(dtype))  # (B, S, S, C)
        return torch.where(valid[..., None], emb, self.invalid_xyz_token)

    def pool_windows(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, S, S, C) -> one token per P x P window (B, G², C): window block, its cls, plus pos_embed."""
        b, _, _, c = emb.shape
        p, g = self.cfg.patch_size, self.cfg.grid_size
        # 1. Windows as a batch: (B, G, P, G, P, C) -> (B, G, G, P, P, C) -> (B·G², P², C), pixels row-major.
        x = emb.reshape(b, g, p, g, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b * g * g, p * p, c)
        # 2. Window cls first, window position embedding, the block.
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B·G², 1 + P², C)
        x = x + self.pos_embed_window
        for block in self.blocks:
            x = block(x)
        # 3. Window cls tokens in row-major (y, x) window order, plus the per-window position embedding.
        x = x[:, 0].reshape(b, g * g, c)  # (B, G², C)
        return x + self.pos_embed.flatten(2).transpose(1, 2)  # pos_embed (1, C, G, G) -> (1, G², C)
