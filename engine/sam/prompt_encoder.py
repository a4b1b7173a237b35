"""SAM's prompt encoder: clicks and box corners -> sparse tokens, a low-res mask (or its absence) -> a dense map.

Positions are encoded with random Fourier features: a point (x, y) in pixels of the padded input square becomes
u = 2·((x, y) + 0.5) / (S_w, S_h) - 1 (the +0.5 moves it to the pixel centre), then f = 2π·u @ G with the fixed
Gaussian matrix G (2, E/2) stored in the checkpoint, and the encoding [sin f, cos f] (E). The same encoding at the
centres of the G x G embedding grid is the image's dense positional encoding.

Per-token learned offsets are added: label 1 (add) -> point_embeddings.1, label 0 (remove) -> point_embeddings.0,
box top-left / bottom-right corners -> point_embeddings.2 / .3, and a padding point (label -1, its encoding zeroed,
`not_a_point_embed` added) is appended to clicks when no box is given.

Names under `prompt_encoder.`: `pe_layer.positional_encoding_gaussian_matrix` (a buffer), `point_embeddings.{0..3}`,
`not_a_point_embed`, `mask_downscaling.{0, 1, 3, 4, 6}`, `no_mask_embed`.

Shapes: B prompt sets, T point tokens, E embedding channels, G embedding grid side, M = 4·G mask-input side.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .image_encoder import LayerNorm2d

LABEL_PAD, LABEL_REMOVE, LABEL_ADD = -1, 0, 1


class PromptEncoder(nn.Module):
    def __init__(self, *, embed_dim: int, image_embedding_size: int, input_image_size: int, mask_in_chans: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size  # G
        self.input_image_size = input_image_size  # S
        self.pe_layer = RandomFourierEncoding(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))  # remove, add, tl, br
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def mask_input_size(self) -> int:
        """M: side of the low-res mask logits the decoder outputs and accepts back as a prompt."""
        return 4 * self.image_embedding_size

    def forward(
        self,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """coords (B, T, 2) px in the input square + labels (B, T) in {0, 1}; boxes (B, 4) px x1, y1, x2, y2;
        masks (B, 1, M, M) logits. Returns sparse (B, T' , E) and dense (B, E, G, G) embeddings."""
        given = [t for t in (coords, boxes, masks) if t is not None]
        batch = given[0].shape[0] if given else 1
        dtype = self.no_mask_embed.weight.dtype
        # 1. sparse tokens: clicks (plus a padding point when there is no box), then the two box corners
        tokens = [self.no_mask_embed.weight.new_zeros(batch, 0, self.embed_dim)]
        if coords is not None:
            if boxes is None:
                coords = torch.cat([coords, coords.new_zeros(batch, 1, 2)], dim=1)  # (B, T + 1, 2)
                labels = torch.cat([labels, labels.new_full((batch, 1), LABEL_PAD)], dim=1)
            tokens.append(self.embed_points(coords, labels))
        if boxes is not None:
            tokens.append(self.embed_boxes(boxes))
        sparse = torch.cat(tokens, dim=1).to(dtype)  # (B, T', E)
        # 2. dense: the mask prompt downscaled 4x, or the learned "no mask" vector everywhere
        if masks is not None:
            dense = self.mask_downscaling(masks.to(dtype))  # (B, E, G, G)
        else:
            g = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, g, g)
        return sparse, dense

    def dense_pe(self) -> torch.Tensor:
        """(1, E, G, G): the encoding of the embedding grid's cell centres, in the weights' dtype."""
        g = self.image_embedding_size
        device = self.pe_layer.positional_encoding_gaussian_matrix.device
        centres = (torch.arange(g, device=device, dtype=torch.float32) + 0.5) / g
        grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)  # (G, G, 2) as (x, y)
        pe = self.pe_layer(grid)  # (G, G, E)
        return pe.permute(2, 0, 1)[None].to(self.no_mask_embed.weight.dtype)  # (1, E, G, G)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """coords (B, T, 2) px, labels (B, T) in {-1, 0, 1} -> (B, T, E) float32."""
        pe = self.pe_layer(self.normalize(coords))  # (B, T, E)
        labels = labels[..., None]  # (B, T, 1)
        offsets = torch.where(labels == LABEL_ADD, self.point_embeddings[1].weight.float(),
                              torch.where(labels == LABEL_REMOVE, self.point_embeddings[0].weight.float(),
                                          self.not_a_point_embed.weight.float()))  # (B, T, E)
        return torch.where(labels == LABEL_PAD, 0.0, pe) + offsets

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes (B, 4) px x1, y1, x2, y2 -> corner tokens (B, 2, E) float32."""
        corners = boxes.reshape(-1, 2, 2)  # (B, 2 corners, xy)
        pe = self.pe_layer(self.normalize(corners))  # (B, 2, E)
        offsets = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight]).float()  # (2, E)
        return pe + offsets

    def normalize(self, coords: torch.Tensor) -> torch.Tensor:
        """Pixels of the input square -> [0, 1] at pixel centres."""
        return (coords.float() + 0.5) / self.input_image_size


class RandomFourierEncoding(nn.Module):
    """[sin, cos](2π · (2u - 1) @ G) for u in [0, 1]², G: (2, F) fixed Gaussian frequencies (upstream's buffer;
    drawn N(0, 1) here, replaced by the checkpoint's on load). Output (..., 2F), float32."""

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_features))

    def forward(self, unit_coords: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * ((2 * unit_coords.float() - 1) @ self.positional_encoding_gaussian_matrix.float())
        return torch.cat([torch.sin(f), torch.cos(f)], dim=-1)
