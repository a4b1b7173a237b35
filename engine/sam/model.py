"""Segment Anything (SAM, the first release): image encoder + prompt encoder + mask decoder, with the public
checkpoints' parameter names (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`, no prefix).

The three public sizes differ only in the image encoder (width, depth, heads, which blocks attend globally);
prompt encoder and mask decoder are the same 4.06 M parameters in all of them. Pixel mean/std are not stored in the
checkpoints (upstream registers them as non-persistent buffers); here they live in the config.

The model does math only; resizing the picture, moving prompts into the input frame, caching the embedding and
choosing masks is `predictor.py`'s work.

Shapes: B batch, S input side (px), G = S / patch embedding side, E prompt/embedding channels, T prompt tokens,
K = 4 mask tokens, M = 4·G low-res mask side, (h, w) resized image inside the square, (H, W) original image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


@dataclass(frozen=True)
class SamConfig:
    img_size: int = 1024  # S, px; the longest image side is resized to this, the rest zero-padded
    patch_size: int = 16  # px; ViT patch (conv kernel and stride)
    encoder_embed_dim: int = 1280  # ViT width C
    encoder_depth: int = 32  # ViT blocks
    encoder_num_heads: int = 16  # ViT heads (head dim 80 for ViT-H, 64 for ViT-B/L)
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)  # blocks attending over all G² tokens
    window_size: int = 14  # tokens; the other blocks attend inside 14 x 14 windows
    mlp_ratio: float = 4.0  # ViT MLP hidden = C * mlp_ratio
    prompt_embed_dim: int = 256  # E; image-embedding channels (neck output) and prompt-token width
    mask_in_chans: int = 16  # hidden channels of the mask-prompt downscaler
    decoder_depth: int = 2  # two-way transformer blocks
    decoder_num_heads: int = 8  # heads of every decoder attention
    decoder_mlp_dim: int = 2048  # decoder MLP hidden width
    attention_downsample_rate: int = 2  # cross-attentions project E -> E / 2
    num_multimask_outputs: int = 3  # ambiguity-aware masks (plus the single-mask token)
    iou_head_depth: int = 3  # layers of the IoU MLP
    iou_head_hidden_dim: int = 256  # hidden width of the IoU MLP
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)  # RGB, 0-255 scale
    mask_threshold: float = 0.0  # logit above which a pixel is in the mask

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"SamConfig: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError(f"SamConfig: encoder width {self.encoder_embed_dim} is not divisible by "
                             f"{self.encoder_num_heads} heads")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(f"SamConfig: global attention blocks {bad} outside 0..{self.encoder_depth - 1}")

    @property
    def embedding_size(self) -> int:
        """G: side of the image embedding in tokens."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """M: side of the low-res mask logits (4·G, 256 for the public models)."""
        return 4 * self.embedding_size


PRESETS: dict[str, SamConfig] = {
    # segment_anything build_sam.py: sam_model_registry "vit_h" (also its "default"), "vit_l", "vit_b".
    "vit_h": SamConfig(),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                       encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_b": SamConfig(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                       encoder_global_attn_indexes=(2, 5, 8, 11)),
    # Tests and smoke runs (random weights): 64-px input, 8 x 8 embedding, 3-token windows (one padded row and
    # column of windows), one global block, 32 x 32 low-res masks.
    "tiny": SamConfig(img_size=64, patch_size=8, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                      encoder_global_attn_indexes=(1,), window_size=3, prompt_embed_dim=32, mask_in_chans=8,
                      decoder_num_heads=2, decoder_mlp_dim=64, iou_head_hidden_dim=32),
}
PRESETS["official"] = PRESETS["vit_h"]


class Sam(nn.Module):
    def __init__(self, cfg: SamConfig):
        super().__init__()
        self.cfg = cfg
        g = cfg.embedding_size
        self.image_encoder = ImageEncoderViT(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.encoder_embed_dim,
            depth=cfg.encoder_depth, num_heads=cfg.encoder_num_heads, mlp_ratio=cfg.mlp_ratio,
            out_chans=cfg.prompt_embed_dim, window_size=cfg.window_size,
            global_attn_indexes=tuple(cfg.encoder_global_attn_indexes),
        )
        self.prompt_encoder = PromptEncoder(embed_dim=cfg.prompt_embed_dim, image_embedding_size=g,
                                            input_image_size=cfg.img_size, mask_in_chans=cfg.mask_in_chans)
        self.mask_decoder = MaskDecoder(
            transformer_dim=cfg.prompt_embed_dim, depth=cfg.decoder_depth, num_heads=cfg.decoder_num_heads,
            mlp_dim=cfg.decoder_mlp_dim, attention_downsample_rate=cfg.attention_downsample_rate,
            num_multimask_outputs=cfg.num_multimask_outputs, iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        )

    def forward(self, images: torch.Tensor, coords: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                boxes: torch.Tensor | None = None,
                mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Resized images (B, 3, h, w) 0-255 -> all K low-res mask logits and IoU predictions (see `decode`)."""
        return self.decode(self.embed(images), coords, labels, boxes, mask_input)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Resized RGB images (B, 3, h, w), values 0-255, max(h, w) = S -> image embeddings (B, E, G, G)."""
        return self.image_encoder(self.preprocess(images))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) 0-255 -> normalised with pixel mean/std, zero-padded bottom/right to (B, 3, S, S), in the
        weights' dtype (normalisation in float32)."""
        h, w = images.shape[-2:]
        s = self.cfg.img_size
        if h > s or w > s:
            raise ValueError(f"Sam.preprocess: image {w}x{h} is larger than the {s}-px input square")
        mean = torch.tensor(self.cfg.pixel_mean, device=images.device).reshape(1, 3, 1, 1)
        std = torch.tensor(self.cfg.pixel_std, device=images.device).reshape(1, 3, 1, 1)
        x = (images.float() - mean) / std
        x = F.pad(x, (0, s - w, 0, s - h))  # (B, 3, S, S)
        return x.to(self.image_encoder.pos_embed.dtype)

    def decode(self, embedding: torch.Tensor, coords: torch.Tensor | None = None, labels: torch.Tensor | None = None,
               boxes: torch.Tensor | None = None,
               mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's embedding (1, E, G, G) and B prompt sets -> (B, K, M, M) mask logits and (B, K) IoU for all
        K mask tokens (token 0: the single-mask answer; 1..3: the multimask answers).

        coords (B, T, 2) px in the input square (after resizing, before padding matters) with labels (B, T)
        (1 add, 0 remove); boxes (B, 4) px x1, y1, x2, y2 in the same frame; mask_input (B, 1, M, M) logits of an
        earlier prediction.
        """
        sparse, dense = self.prompt_encoder(coords, labels, boxes, mask_input)
        return self.mask_decoder(embedding, self.prompt_encoder.dense_pe(), sparse, dense)

    def postprocess_masks(self, logits: torch.Tensor, input_size: tuple[int, int],
                          original_size: tuple[int, int]) -> torch.Tensor:
        """(B, K, M, M) low-res logits -> (B, K, H, W) float32 logits on the original image: bilinear up to the
        S x S square, crop the resized image's (h, w), bilinear to (H, W) (align_corners=False throughout)."""
        s = self.cfg.img_size
        x = F.interpolate(logits.float(), size=(s, s), mode="bilinear", align_corners=False)  # (B, K, S, S)
        x = x[..., : input_size[0], : input_size[1]]  # (B, K, h, w)
        return F.interpolate(x, size=tuple(original_size), mode="bilinear", align_corners=False)  # (B, K, H, W)
