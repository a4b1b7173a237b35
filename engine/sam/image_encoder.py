"""SAM's image encoder: a plain ViT (ViTDet style) over a padded 1024-px square, most blocks attending inside
14 x 14-token windows and a few globally, every attention with decomposed relative-position biases, then a
convolutional neck down to 256 channels.

Parameter names are the public checkpoint's (under `image_encoder.`): `pos_embed`, `patch_embed.proj`,
`blocks.{i}.{norm1, attn.{qkv, proj, rel_pos_h, rel_pos_w}, norm2, mlp.{lin1, lin2}}`, `neck.{0, 1, 2, 3}`.
`LayerNorm2d` and `MLPBlock` are shared with the prompt encoder and the mask decoder.

Shapes: B batch, S input side (px), G = S / patch tokens per side, C channels, H heads, D = C / H head dim,
P window side in tokens (G for a global block), N = P² tokens per window, n windows per image, O out channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.dino import PatchEmbed
from ..models.norms import LayerNorm32


class ImageEncoderViT(nn.Module):
    """(B, 3, S, S) normalised, padded image -> (B, O, G, G) image embedding."""

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        out_chans: int,
        window_size: int,
        global_attn_indexes: tuple[int, ...],
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            EncoderBlock(embed_dim, num_heads, mlp_ratio, norm_eps,
                         window_size=0 if i in global_attn_indexes else window_size, grid_size=grid)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        if (h, w) != (self.img_size, self.img_size):
            raise ValueError(f"ImageEncoderViT: input is {h}x{w}, expected the padded {self.img_size}² square")
        grid = self.pos_embed.shape[1]
        x = self.patch_embed(images).reshape(b, grid, grid, -1)  # (B, N, C) -> (B, G, G, C)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))  # (B, G, G, C) -> (B, C, G, G) -> (B, O, G, G)


class EncoderBlock(nn.Module):
    """Pre-norm block: x += attn(norm1 x) (inside windows when window_size > 0, else over all G² tokens);
    x += mlp(norm2 x). Windows tile the (zero-padded) token grid without overlap."""

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float, norm_eps: float, *, window_size: int,
                 grid_size: int):
        super().__init__()
        self.window_size = window_size
        self.norm1 = LayerNorm32(channels, eps=norm_eps)
        self.attn = RelPosAttention(channels, num_heads, window_size if window_size > 0 else grid_size)
        self.norm2 = LayerNorm32(channels, eps=norm_eps)
        self.mlp = MLPBlock(channels, int(channels * mlp_ratio), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, G, G, C)
        y = self.norm1(x)
        if self.window_size > 0:
            y = window_unpartition(self.attn(window_partition(y, self.window_size)), x.shape[1], x.shape[2])
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class RelPosAttention(nn.Module):
    """Multi-head self-attention over a P x P token square, with the decomposed relative-position bias
    bias[i, j] = q_i · rel_pos_h[row_i - row_j + P - 1] + q_i · rel_pos_w[col_i - col_j + P - 1]
    (q unscaled) added to the scaled logits. `rel_pos_h/w`: (2P - 1, D)."""

    def __init__(self, channels: int, num_heads: int, side: int):
        super().__init__()
        self.num_heads = num_heads
        head_dim = channels // num_heads
        self.qkv = nn.Linear(channels, channels * 3)
        self.proj = nn.Linear(channels, channels)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * side - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * side - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, ph, pw, c = x.shape  # (B', P, P, C) with B' = B·n
        q, k, v = self.qkv(x).reshape(b, ph * pw, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B', H, N, D)
        bias = relative_position_bias(q, self.rel_pos_h, self.rel_pos_w, ph, pw)  # (B', H, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B', H, N, D)
        out = out.transpose(1, 2).reshape(b, ph, pw, c)  # (B', N, H, D) -> (B', P, P, C)
        return self.proj(out)


class LayerNorm2d(LayerNorm32):
    """LayerNorm over the channels of a (B, C, h, w) map (float32 compute); `weight`, `bias`: (C,)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # channels last and back


class MLPBlock(nn.Module):
    """lin1 -> activation -> lin2 (GELU in the image encoder, ReLU in the mask decoder's transformer)."""

    def __init__(self, channels: int, hidden: int, activation: nn.Module):
        super().__init__()
        self.lin1 = nn.Linear(channels, hidden)
        self.act = activation
        self.lin2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def relative_position_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, ph: int,
                           pw: int) -> torch.Tensor:
    """q: (B', H, N, D) with N = ph·pw (row-major) -> additive logits bias (B', H, N, N) in q's dtype."""
    if rel_pos_h.shape[0] != 2 * ph - 1 or rel_pos_w.shape[0] != 2 * pw - 1:
        raise ValueError(f"relative-position tables {tuple(rel_pos_h.shape)}/{tuple(rel_pos_w.shape)} do not fit a "
                         f"{ph}x{pw} token square")
    b, h, _, d = q.shape
    table_h = rel_pos_h[relative_index(ph, q.device)].to(q.dtype)  # (ph, ph, D): [query row, key row]
    table_w = rel_pos_w[relative_index(pw, q.device)].to(q.dtype)  # (pw, pw, D): [query col, key col]
    q = q.reshape(b, h, ph, pw, d)  # (B', H, N, D) -> (B', H, ph, pw, D)
    bias_h = torch.einsum("bnyxd,ykd->bnyxk", q, table_h)  # (B', H, ph, pw, key rows)
    bias_w = torch.einsum("bnyxd,xkd->bnyxk", q, table_w)  # (B', H, ph, pw, key cols)
    bias = bias_h[..., :, None] + bias_w[..., None, :]  # (B', H, ph, pw, ph, pw)
    return bias.reshape(b, h, ph * pw, ph * pw)


def relative_index(size: int, device: torch.device) -> torch.Tensor:
    """(size, size) long: i - j + size - 1, the row of the (2·size - 1)-entry table for query i, key j."""
    pos = torch.arange(size, device=device)
    return pos[:, None] - pos[None, :] + (size - 1)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, G, G', C) -> (B·n, P, P, C): zero-pad bottom/right to multiples of P, then tile row-major."""
    b, gh, gw, c = x.shape
    pad_h, pad_w = -gh % window, -gw % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, Gh + pad_h, Gw + pad_w, C)
    nh, nw = (gh + pad_h) // window, (gw + pad_w) // window
    x = x.reshape(b, nh, window, nw, window, c).permute(0, 1, 3, 2, 4, 5)  # (B, nh, nw, P, P, C)
    return x.reshape(b * nh * nw, window, window, c)


def window_unpartition(windows: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Inverse of window_partition: (B·n, P, P, C) -> (B, G, G', C), the padding dropped."""
    window, c = windows.shape[1], windows.shape[-1]
    nh, nw = -(-gh // window), -(-gw // window)
    b = windows.shape[0] // (nh * nw)
    x = windows.reshape(b, nh, nw, window, window, c).permute(0, 1, 3, 2, 4, 5)  # (B, nh, P, nw, P, C)
    return x.reshape(b, nh * window, nw * window, c)[:, :gh, :gw]
