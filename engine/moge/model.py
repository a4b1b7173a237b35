"""MoGe v1 (`Ruicheng/moge-vitl`): DINOv2 ViT/14 without registers + a convolutional pointmap head.

`MoGeModel.forward(image, num_tokens)` returns the affine-invariant pointmap (after the `exp` remap, before
any shift) and the raw mask value (no sigmoid) at the input resolution. Camera recovery and masking live in
`infer.py`. State-dict names are those of the public `model.pt` (`image_mean`, `image_std`, `backbone.*`,
`head.*`, no prefix).

Shapes: B batch, H, W input height/width, h, w resized image (≈ num_tokens · 14² pixels), h14 = h // 14 · 14,
gh, gw patch grid (h // 14, w // 14), N = gh · gw patches, T = 1 + N tokens, C backbone channels,
nh heads, D = C / nh, P projected channels, M pos-embed grid side (37).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.dino import IMAGENET_MEAN, IMAGENET_STD, PatchEmbed, TransformerBlock
from ..models.norms import GroupNorm32, LayerNorm32
from .geometry import normalized_view_plane_uv


@dataclass(frozen=True)
class MoGeConfig:
    # Backbone: DINOv2 ViT/14 (the blocks of engine/models/dino.py), no register tokens, LayerScale, exact GELU.
    embed_dim: int = 1024  # C
    depth: int = 24  # transformer blocks
    num_heads: int = 16  # nh
    mlp_ratio: float = 4.0  # MLP hidden = C · mlp_ratio
    norm_eps: float = 1e-6  # every LayerNorm of the backbone
    patch_size: int = 14  # px; conv kernel and stride
    pos_embed_grid: int = 37  # M; learned position embedding for M × M patches (518 px)
    pos_embed_offset: float = 0.1  # pos-embed resize uses scale_factor (g + offset) / M, not a target size
    intermediate_layers: int = 4  # the last n blocks feed the head (ViT-L: blocks 20–23)
    # Head.
    dim_proj: int = 512  # P; 1×1 projection of each feature map, summed
    dim_upsample: tuple[int, ...] = (256, 128, 64)  # channels after each 2× upsampling stage
    dim_times_res_block_hidden: int = 2  # residual block hidden channels = stage channels · this
    num_res_blocks: int = 2  # residual blocks per stage
    last_conv_channels: int = 32  # hidden channels of each output block
    last_conv_size: int = 1  # kernel of the last conv of each output block
    # Inference (used by infer.py). The public checkpoint's trained_area_range [250000, 500000] // 196.
    num_tokens_range: tuple[int, int] = (1275, 2551)  # tokens at resolution_level 0 and 9
    mask_threshold: float = 0.5  # on the raw mask value (no sigmoid)

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"MoGeConfig: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 1 <= self.intermediate_layers <= self.depth:
            raise ValueError(f"MoGeConfig: intermediate_layers {self.intermediate_layers} not in 1..{self.depth}")
        hidden = [c * self.dim_times_res_block_hidden for c in self.dim_upsample]
        if any(h < 32 or h % (h // 32) for h in hidden):
            raise ValueError(f"MoGeConfig: residual hidden channels {hidden} must allow GroupNorm(h // 32, h)")


PRESETS: dict[str, MoGeConfig] = {
    "official": MoGeConfig(),
    # ../shared/parity/moge (dinov2_tiny14): embed 64, depth 3, heads 4; trained_area_range [2400, 6000].
    "tiny": MoGeConfig(
        embed_dim=64, depth=3, num_heads=4, intermediate_layers=2, dim_proj=32, dim_upsample=(32, 16, 16),
        last_conv_channels=16, num_tokens_range=(12, 30),
    ),
}


class MoGeModel(nn.Module):
    """Resize + normalise, DINOv2 features of the last blocks, head, back to the input size, `exp` remap."""

    def __init__(self, cfg: MoGeConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("image_mean", torch.empty(1, 3, 1, 1))
        self.register_buffer("image_std", torch.empty(1, 3, 1, 1))
        self.backbone = DinoV2Backbone(cfg)
        self.head = PointmapHead(cfg)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the ImageNet mean/std buffers (after `to_empty`); the checkpoint also stores them."""
        with torch.no_grad():
            self.image_mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.image_std.copy_(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) RGB in [0, 1] -> points (B, H, W, 3) float32 after `exp`, raw mask (B, H, W) float32."""
        height, width = image.shape[-2:]
        # 1. Resize to about num_tokens patches, normalise, crop-resize to a multiple of the patch size.
        image_resized, image_14 = self.preprocess(image, num_tokens)
        # 2. Backbone features of the last blocks, then the head at the resized resolution.
        features = self.backbone(image_14.to(self.backbone.patch_embed.proj.weight.dtype), self.cfg.intermediate_layers)
        points, mask = self.head(features, image_resized.shape[-2:])  # (B, 3, h, w), (B, 1, h, w)
        # 3. Back to the input size in float32, channels last, exp remap of z.
        size = (height, width)
        points = F.interpolate(points.float(), size, mode="bilinear", align_corners=False)
        points = points.permute(0, 2, 3, 1)  # (B, 3, H, W) -> (B, H, W, 3)
        mask = F.interpolate(mask.float(), size, mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
        return remap_exp(points), mask

    def preprocess(self, image: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) -> (normalised resized (B, 3, h, w), backbone input (B, 3, h14, w14)), float32."""
        height, width = image.shape[-2:]
        h, w = resized_size(height, width, num_tokens)
        p = self.cfg.patch_size
        image = F.interpolate(image.float(), (h, w), mode="bicubic", align_corners=False, antialias=True)
        image = (image - self.image_mean.float()) / self.image_std.float()
        image_14 = F.interpolate(image, (h // p * p, w // p * p), mode="bilinear", align_corners=False, antialias=True)
        return image, image_14


# ---------------------------------------------------------------------------------------------- backbone


class DinoV2Backbone(nn.Module):
    """DINOv2 ViT/14 without registers; returns the normed outputs of the last n blocks."""

    def __init__(self, cfg: MoGeConfig):
        super().__init__()
        c, m = cfg.embed_dim, cfg.pos_embed_grid
        self.patch_size = cfg.patch_size
        self.pos_embed_offset = cfg.pos_embed_offset
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + m * m, c))
        self.mask_token = nn.Parameter(torch.zeros(1, c))  # stored in the checkpoint, unused at inference
        self.patch_embed = PatchEmbed(cfg.patch_size, c)
        self.blocks = nn.ModuleList(
            TransformerBlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, layer_scale=True) for _ in range(cfg.depth)
        )
        self.norm = LayerNorm32(c, eps=cfg.norm_eps)

    def forward(self, image: torch.Tensor, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """image (B, 3, h14, w14) -> for each of the last n blocks: (patch tokens (B, N, C), cls token (B, C))."""
        grid = (image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size)
        x = self.patch_embed(image)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, T, C)
        x = x + self.position_embedding(grid).to(x.dtype)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= len(self.blocks) - n:
                x_normed = self.norm(x)
                outputs.append((x_normed[:, 1:], x_normed[:, 0]))
        return outputs

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, T, C): cls embedding + the M × M patch embeddings resized (bicubic, no AA) to the patch grid."""
        m = int(round((self.pos_embed.shape[1] - 1) ** 0.5))
        if grid == (m, m):
            return self.pos_embed
        pos = self.pos_embed.float()
        patch_pos = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)  # (1, C, M, M)
        # scale_factor (not size) sets the sampling positions: src = (dst + .5) · M / (g + offset) − .5.
        scale = ((grid[0] + self.pos_embed_offset) / m, (grid[1] + self.pos_embed_offset) / m)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)
        if tuple(patch_pos.shape[-2:]) != grid:
            raise ValueError(f"position embedding resized to {tuple(patch_pos.shape[-2:])}, expected {grid}")
        patch_pos = patch_pos.flatten(2).transpose(1, 2)  # (1, N, C)
        return torch.cat([pos[:, :1], patch_pos], dim=1).to(self.pos_embed.dtype)  # (1, T, C)


# ---------------------------------------------------------------------------------------------- head


class PointmapHead(nn.Module):
    """Sum of projected feature maps -> 3 × (uv concat, 2× up, residual blocks) -> resize -> points and mask.

    Every stage concatenates the view-plane uv of its own grid at the resized image's aspect ratio.
    """

    def __init__(self, cfg: MoGeConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.projects = nn.ModuleList(
            nn.Conv2d(cfg.embed_dim, cfg.dim_proj, kernel_size=1) for _ in range(cfg.intermediate_layers)
        )
        stage_in = [cfg.dim_proj, *cfg.dim_upsample[:-1]]
        self.upsample_blocks = nn.ModuleList(
            nn.Sequential(
                upsampler(c_in + 2, c_out),
                *(ResidualConvBlock(c_out, c_out * cfg.dim_times_res_block_hidden) for _ in range(cfg.num_res_blocks)),
            )
            for c_in, c_out in zip(stage_in, cfg.dim_upsample)
        )
        k = cfg.last_conv_size
        self.output_block = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cfg.dim_upsample[-1] + 2, cfg.last_conv_channels, 3, padding=1, padding_mode="replicate"),
                nn.ReLU(),
                nn.Conv2d(cfg.last_conv_channels, dim_out, k, padding=k // 2, padding_mode="replicate"),
            )
            for dim_out in (3, 1)  # points, mask
        )

    def forward(
        self, features: list[tuple[torch.Tensor, torch.Tensor]], image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features: per block (patch tokens (B, N, C), cls (B, C)); image_size (h, w) of the resized image.
        Returns points (B, 3, h, w) and raw mask (B, 1, h, w), before any remap."""
        h, w = image_size
        gh, gw = h // self.patch_size, w // self.patch_size
        aspect_ratio = w / h
        # 1. Project each block's patch tokens and sum.
        x = sum(
            proj(tokens.transpose(1, 2).unflatten(2, (gh, gw)))  # (B, N, C) -> (B, C, gh, gw) -> (B, P, gh, gw)
            for proj, (tokens, _) in zip(self.projects, features)
        )
        # 2. Three 2× upsampling stages, each fed the uv grid of its input.
        for block in self.upsample_blocks:
            x = torch.cat([x, _uv_channels(x, aspect_ratio)], dim=1)  # (B, c + 2, ·, ·)
            x = block(x)
        # 3. To the resized image size, uv again, one output block per quantity.
        x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False)
        x = torch.cat([x, _uv_channels(x, aspect_ratio)], dim=1)  # (B, c + 2, h, w)
        points_block, mask_block = self.output_block
        return points_block(x), mask_block(x)


class ResidualConvBlock(nn.Module):
    """x + [GN(1) → ReLU → conv3×3 → GN(hidden // 32) → ReLU → conv3×3](x), replicate padding."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(
            GroupNorm32(1, channels),
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1, padding_mode="replicate"),
            GroupNorm32(hidden // 32, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1, padding_mode="replicate"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


# ---------------------------------------------------------------------------------------------- helpers


def upsampler(c_in: int, c_out: int) -> nn.Sequential:
    """2× transposed conv (kernel 2, stride 2), then a 3×3 replicate-padded conv."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2),
        nn.Conv2d(c_out, c_out, 3, padding=1, padding_mode="replicate"),
    )


def _uv_channels(x: torch.Tensor, aspect_ratio: float) -> torch.Tensor:
    """View-plane uv of x's grid as channels: (B, 2, h, w) in x's dtype."""
    uv = normalized_view_plane_uv(x.shape[-1], x.shape[-2], aspect_ratio, dtype=x.dtype, device=x.device)
    return uv.permute(2, 0, 1).expand(x.shape[0], -1, -1, -1)  # (h, w, 2) -> (B, 2, h, w)


def remap_exp(points: torch.Tensor) -> torch.Tensor:
    """Raw head output (..., 3) -> points (x·e^z, y·e^z, e^z)."""
    xy, z = points.split([2, 1], dim=-1)
    z = torch.exp(z)
    return torch.cat([xy * z, z], dim=-1)


def resized_size(height: int, width: int, num_tokens: int) -> tuple[int, int]:
    """Size (h, w) with about num_tokens patches of 14² px and the input's aspect ratio (truncated)."""
    factor = (num_tokens * 14**2 / (height * width)) ** 0.5
    return int(height * factor), int(width * factor)
