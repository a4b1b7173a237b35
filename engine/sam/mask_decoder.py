"""SAM's mask decoder: a two-way transformer between prompt tokens and the image embedding, then hypernetwork
MLPs that turn each output mask token into the weights of a per-pixel dot product over the 4x upscaled embedding,
and an MLP head that predicts each mask's IoU.

Output tokens: [iou token, mask token 0 (the single-mask answer), mask tokens 1..3 (the three ambiguity levels)],
followed by the prompt tokens. `forward` always returns all four masks; choosing (0 alone, or 1..3) is the caller's.

Names under `mask_decoder.`: `iou_token`, `mask_tokens`, `transformer.layers.{0,1}.{self_attn, norm1,
cross_attn_token_to_image, norm2, mlp.{lin1, lin2}, norm3, norm4, cross_attn_image_to_token}`,
`transformer.final_attn_token_to_image`, `transformer.norm_final_attn`, `output_upscaling.{0, 1, 3}`,
`output_hypernetworks_mlps.{0..3}.layers.{0,1,2}`, `iou_prediction_head.layers.{0,1,2}`;
every attention has `q_proj`, `k_proj`, `v_proj`, `out_proj`.

Shapes: B prompt sets, Q = 5 + T tokens (T prompt tokens), E channels, G embedding side, L = G² image tokens,
K = 4 mask tokens, M = 4·G low-res mask side, E' = E / 8 upscaled channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.attention import attention
from ..models.norms import LayerNorm32
from .image_encoder import LayerNorm2d, MLPBlock


class MaskDecoder(nn.Module):
    def __init__(self, *, transformer_dim: int, depth: int, num_heads: int, mlp_dim: int,
                 attention_downsample_rate: int, num_multimask_outputs: int, iou_head_depth: int,
                 iou_head_hidden_dim: int):
        super().__init__()
        e = transformer_dim
        self.num_mask_tokens = num_multimask_outputs + 1  # K
        self.iou_token = nn.Embedding(1, e)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, e)
        self.transformer = TwoWayTransformer(e, depth, num_heads, mlp_dim, attention_downsample_rate)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(e, e // 4, kernel_size=2, stride=2),
            LayerNorm2d(e // 4),
            nn.GELU(),
            nn.ConvTranspose2d(e // 4, e // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(e, e, e // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(e, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding (1 or B, E, G, G), image_pe (1, E, G, G), sparse (B, T, E), dense (B, E, G, G)
        -> mask logits (B, K, M, M), predicted IoU (B, K)."""
        b = sparse.shape[0]
        # 1. tokens = [iou, mask tokens, prompts]; image = embedding + dense prompt
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)  # (1 + K, E)
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], dim=1)  # (B, Q, E)
        image = image_embedding.expand(b, -1, -1, -1) + dense  # (B, E, G, G)
        _, e, g, _ = image.shape
        # 2. two-way transformer
        tokens, keys = self.transformer(image, image_pe, tokens)  # (B, Q, E), (B, L, E)
        iou_out = tokens[:, 0]  # (B, E)
        mask_out = tokens[:, 1 : 1 + self.num_mask_tokens]  # (B, K, E)
        # 3. upscale the image tokens 4x and take one dot product per mask token and pixel
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(b, e, g, g))  # (B, E', M, M)
        weights = torch.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                              dim=1)  # (B, K, E')
        m = upscaled.shape[-1]
        masks = (weights @ upscaled.flatten(2)).reshape(b, self.num_mask_tokens, m, m)  # (B, K, M, M)
        # 4. IoU prediction
        return masks, self.iou_prediction_head(iou_out)


class TwoWayTransformer(nn.Module):
    """`depth` TwoWayAttentionBlocks (the first without positional encoding on its self-attention), then a final
    token -> image attention and LayerNorm. Returns the updated tokens and image tokens."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int, downsample_rate: int):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, downsample_rate, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate)
        self.norm_final_attn = LayerNorm32(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor,
                tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image.flatten(2).transpose(1, 2)  # (B, E, G, G) -> (B, L, E)
        key_pe = image_pe.flatten(2).transpose(1, 2)  # (1, L, E)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        queries = queries + self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries), keys


class TwoWayAttentionBlock(nn.Module):
    """(1) token self-attention, (2) tokens -> image cross-attention, (3) MLP on tokens, (4) image -> tokens
    cross-attention; each residual and post-norm. Query/key positional encodings are added to q and k only."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, skip_first_layer_pe: bool):
        super().__init__()
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = DecoderAttention(dim, num_heads, 1)
        self.norm1 = LayerNorm32(dim)
        self.cross_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate)
        self.norm2 = LayerNorm32(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU())
        self.norm3 = LayerNorm32(dim)
        self.norm4 = LayerNorm32(dim)
        self.cross_attn_image_to_token = DecoderAttention(dim, num_heads, downsample_rate)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # queries (B, Q, E), keys (B, L, E), query_pe (B, Q, E), key_pe (1, L, E)
        if self.skip_first_layer_pe:  # the first layer replaces the tokens (no residual, no PE)
            queries = self.norm1(self.self_attn(queries, queries, queries))
        else:
            q = queries + query_pe
            queries = self.norm1(queries + self.self_attn(q, q, queries))
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class DecoderAttention(nn.Module):
    """Attention whose q/k/v projections map E -> E / downsample_rate (split into heads), out_proj back to E."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int):
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"DecoderAttention: {num_heads} heads do not divide the inner width {inner}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, lq, _ = q.shape
        s = k.shape[1]
        k = k.expand(b, -1, -1) if k.shape[0] != b else k
        v = v.expand(b, -1, -1) if v.shape[0] != b else v
        q = self.q_proj(q).reshape(b, lq, self.num_heads, -1)  # (B, Lq, H, D)
        k = self.k_proj(k).reshape(b, s, self.num_heads, -1)  # (B, S, H, D)
        v = self.v_proj(v).reshape(b, s, self.num_heads, -1)
        return self.out_proj(attention(q, k, v))  # (B, Lq, H·D) -> (B, Lq, E)


class MLP(nn.Module):
    """`num_layers` Linear layers in `layers`, ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
