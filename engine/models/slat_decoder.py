"""The SLAT decoders' shared trunk: a sparse swin transformer over the structured latent's voxels.

Used by the Gaussian decoder (`gs_decoder.py`) and the mesh decoder (`mesh_decoder.py`), whose checkpoints
hold these keys at the top level (raw state dicts, no prefix): `input_layer`, `blocks.<i>.attn.{to_qkv,to_out}`,
`blocks.<i>.mlp.mlp.{0,2}`.

Shapes: N voxels, C model channels, H heads, D = C / H.

    h = input_layer(feats) + APE(coords)            (N, C)
    blocks: h += attn(LN(h)) within windows; h += mlp(LN(h))     (LN: no affine, eps 1e-6, no q/k norm)
Block i uses windows of `window_size` voxels per axis, shifted by (window_size / 2) * (i % 2) on all axes.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..sparse.attention import windowed_attention
from ..sparse.tensor import SparseTensor
from .attention import FeedForwardNet, SelfAttention
from .embeddings import absolute_position_embedding
from .norms import LayerNorm32


@dataclass(frozen=True)
class SlatDecoderConfig:
    resolution: int = 64  # voxel grid size of the structured latent
    latent_channels: int = 8  # input feature channels
    model_channels: int = 768  # C
    num_blocks: int = 12  # swin transformer blocks
    num_heads: int = 12  # attention heads (head dim C / heads)
    mlp_ratio: float = 4.0  # MLP hidden = C * mlp_ratio
    window_size: int = 8  # swin window edge in voxels; odd blocks shift windows by window_size // 2

    def __post_init__(self) -> None:
        if self.model_channels % self.num_heads:
            raise ValueError(f"model_channels {self.model_channels} is not divisible by num_heads {self.num_heads}")


PRESETS: dict[str, SlatDecoderConfig] = {
    "official": SlatDecoderConfig(),
    "tiny": SlatDecoderConfig(model_channels=32, num_blocks=2, num_heads=2),
}


class SlatDecoderTrunk(nn.Module):
    """input_layer + APE + swin blocks. Subclasses add their heads; the trunk keys stay at the top level."""

    def __init__(self, cfg: SlatDecoderConfig):
        super().__init__()
        self.trunk_cfg = cfg
        self.input_layer = nn.Linear(cfg.latent_channels, cfg.model_channels)
        shifts = [(cfg.window_size // 2) * (i % 2) for i in range(cfg.num_blocks)]  # swin: every other block
        self.blocks = nn.ModuleList(
            SwinBlock(cfg.model_channels, cfg.num_heads, cfg.mlp_ratio, cfg.window_size, shift) for shift in shifts
        )

    def trunk(self, x: SparseTensor) -> SparseTensor:
        """x: feats (N, latent_channels) -> (N, C) after the last block, in the blocks' weight dtype."""
        dtype = self.blocks[0].attn.to_qkv.weight.dtype if len(self.blocks) else self.input_layer.weight.dtype
        h = self.input_layer(x.feats.to(self.input_layer.weight.dtype))  # (N, C)
        h = h + absolute_position_embedding(x.coords[:, 1:], self.trunk_cfg.model_channels).to(h.dtype)
        h = x.replace(h.to(dtype))
        for block in self.blocks:
            h = block(h)
        return h

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.trunk(x)


class SwinBlock(nn.Module):
    """Pre-norm transformer block with windowed self-attention: h += attn(LN(h)); h += mlp(LN(h))."""

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float, window: int, shift: int):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(channels, num_heads, qk_rms_norm=False)
        self.mlp = FeedForwardNet(channels, mlp_ratio)

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = x.feats  # (N, C)
        q, k, v = (t[0] for t in self.attn.qkv(self.norm1(h)[None]))  # (N, H, D) each
        h = h + self.attn.to_out(windowed_attention(q, k, v, x, self.window, self.shift))
        h = h + self.mlp(self.norm2(h))
        return x.replace(h)
