"""DINOv2 ViT-L/14 with 4 register tokens, and the `Dino` wrapper SAM 3D Objects puts around it.

The backbone is what torch.hub's `dinov2_vitl14_reg` builds (patch 14, LayerScale, MLP with exact GELU,
qkv bias, LayerNorm eps 1e-6); its state-dict names are the hub's, under `backbone.`. The wrapper resizes and
ImageNet-normalises its input and returns one of two token sets, both derived from the last block's output:

* SS path (stage 1, `prenorm_features=False`): `[norm(cls), norm(patches)]`, registers dropped (1 + N tokens).
* SLAT path (stage 2, `prenorm_features=True`): affine-free `layer_norm(eps 1e-5)` over all 1 + R + N tokens.

`forward_both` gives both from one backbone pass (the pipeline shares one backbone between the stages).

The parts (`PatchEmbed`, `TransformerBlock` with `ViTAttention`, `LayerScale`, `Mlp`) carry the hub's names and are
shared: MoGe's DINOv2 backbone (`engine/moge/model.py`) and the pointmap embedder's window block use them too.

Shapes: B batch, S input side (px), G = S / patch patches per side, N = G² patches, R register tokens,
T tokens, C channels, H heads, D = C / H head dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .attention import attention
from .norms import LayerNorm32, layer_norm32

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DinoConfig:
    img_size: int = 518  # px; the backbone's native side, pos_embed covers (img_size / patch_size)² patches
    patch_size: int = 14  # px; side of one patch (conv kernel and stride)
    embed_dim: int = 1024  # C
    depth: int = 24  # transformer blocks
    num_heads: int = 16  # H
    num_register_tokens: int = 4  # R; inserted after cls, no position embedding
    mlp_ratio: float = 4.0  # MLP hidden = C * mlp_ratio
    norm_eps: float = 1e-6  # every LayerNorm inside the backbone
    input_size: int = 518  # px; the wrapper resizes inputs to input_size² (bilinear) when they differ
    prenorm_features: bool = False  # False: SS tokens [norm(cls), norm(patches)]; True: SLAT tokens (all, LN)

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"DinoConfig: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"DinoConfig: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.input_size != self.img_size:
            # Upstream would interpolate pos_embed here; the official and tiny configs never need it.
            raise ValueError(
                f"DinoConfig: input_size {self.input_size} must equal img_size {self.img_size} "
                "(position-embedding interpolation is not implemented)"
            )

    @property
    def grid_size(self) -> int:
        """G: patches per side."""
        return self.img_size // self.patch_size

    @property
    def num_ss_tokens(self) -> int:
        """Tokens of the SS output: cls + patches."""
        return 1 + self.grid_size**2

    @property
    def num_slat_tokens(self) -> int:
        """Tokens of the SLAT output: cls + registers + patches."""
        return 1 + self.num_register_tokens + self.grid_size**2


PRESETS: dict[str, DinoConfig] = {
    "official": DinoConfig(),
    # official_format_tiny/not_in_yaml.json: img 56, width 32, 2 blocks, 2 heads (4 x 4 patches).
    "tiny": DinoConfig(img_size=56, embed_dim=32, depth=2, num_heads=2, input_size=56),
}


class Dino(nn.Module):
    """Upstream `Dino`: preprocessing + DINOv2 backbone + the SS or SLAT token selection."""

    def __init__(self, cfg: DinoConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = DinoVisionTransformer(cfg)
        self._normalisation_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 1|3, H, W) in [0, 1] -> (B, 1 + N, C) SS tokens, or (B, 1 + R + N, C) SLAT tokens."""
        x = self.features(images)
        return self.slat_tokens(x) if self.cfg.prenorm_features else self.ss_tokens(x)

    def forward_both(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass -> (SS tokens (B, 1 + N, C), SLAT tokens (B, 1 + R + N, C)), whatever the config says."""
        x = self.features(images)
        return self.ss_tokens(x), self.slat_tokens(x)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 1|3, H, W) in [0, 1] -> last block output (B, 1 + R + N, C), order [cls, registers, patches]."""
        return self.backbone(self.preprocess(images))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1|3, H, W) in [0, 1] -> (B, 3, S, S) float32: bilinear resize, 1 -> 3 channels, ImageNet-normalise.

        Masks (1 channel) are repeated to 3 channels and normalised like RGB, as upstream does.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise InputError(f"Dino expects images of shape (B, 1 or 3, H, W), got {tuple(images.shape)}")
        s = self.cfg.input_size
        x = images.float()
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        x = x.expand(-1, 3, -1, -1)  # (B, 3, S, S); no-op for RGB
        mean, std = self._normalisation(x.device)
        return (x - mean) / std

    def _normalisation(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """ImageNet mean and std (1, 3, 1, 1) float32 on `device`. Constants rather than buffers, so they stay
        float32 when the weights are cast to half precision; made once per device, so that a call replayed from a
        CUDA graph does not copy them from the host."""
        cache = self._normalisation_cache
        if device not in cache:
            cache[device] = (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
                             torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))
        return cache[device]

    def ss_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Last block output (B, 1 + R + N, C) -> norm([cls, patches]) (B, 1 + N, C)."""
        r = self.cfg.num_register_tokens
        return self.backbone.norm(torch.cat([x[:, :1], x[:, 1 + r :]], dim=1))  # (B, 1 + N, C)

    def slat_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Last block output (B, 1 + R + N, C) -> affine-free layer_norm(eps 1e-5), same shape."""
        return layer_norm32(x, eps=1e-5)


class DinoVisionTransformer(nn.Module):
    """The hub model's parameters: cls_token, pos_embed, register_tokens, mask_token, patch_embed, blocks, norm."""

    def __init__(self, cfg: DinoConfig):
        super().__init__()
        c = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid_size**2, c))  # cls + patches
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, c))
        self.mask_token = nn.Parameter(torch.zeros(1, c))  # training-time masking only; unused here
        self.patch_embed = PatchEmbed(cfg.patch_size, c)
        self.blocks = nn.ModuleList(
            TransformerBlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, layer_scale=True) for _ in range(cfg.depth)
        )
        self.norm = LayerNorm32(c, eps=cfg.norm_eps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) -> last block output (B, 1 + R + N, C), before the final norm."""
        b = images.shape[0]
        # 1. Patches + cls, with position embeddings.
        x = self.patch_embed(images.to(self.pos_embed.dtype))  # (B, N, C)
        if x.shape[1] + 1 != self.pos_embed.shape[1]:
            raise InputError(
                f"DINO backbone got {x.shape[1]} patches but its pos_embed covers {self.pos_embed.shape[1] - 1}; "
                "pass images of the configured size"
            )
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embed  # (B, 1 + N, C)
        # 2. Registers between cls and patches (no position embedding).
        x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)  # (B, 1 + R + N, C)
        # 3. Blocks.
        for block in self.blocks:
            x = block(x)
        return x


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = patch size; `proj`."""

    def __init__(self, patch_size: int, channels: int):
        super().__init__()
        self.proj = nn.Conv2d(3, channels, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, C, G, G) -> (B, N, C)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block (DINOv2 / timm names): x += ls1(attn(norm1 x)); x += ls2(mlp(norm2 x)).

    `layer_scale=False` drops ls1/ls2 (timm `Block` without LayerScale, as in the pointmap embedder).
    """

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float, norm_eps: float, layer_scale: bool):
        super().__init__()
        self.norm1 = LayerNorm32(channels, eps=norm_eps)
        self.attn = ViTAttention(channels, num_heads)
        self.ls1 = LayerScale(channels) if layer_scale else nn.Identity()
        self.norm2 = LayerNorm32(channels, eps=norm_eps)
        self.mlp = Mlp(channels, int(channels * mlp_ratio))
        self.ls2 = LayerScale(channels) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTAttention(nn.Module):
    """Fused `qkv` (with bias) -> SDPA -> `proj`."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, c // self.num_heads).unbind(dim=2)  # (B, T, H, D)
        return self.proj(attention(q, k, v))  # (B, T, C)


class LayerScale(nn.Module):
    """x * gamma (per channel)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
