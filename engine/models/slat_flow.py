"""Stage-2 SLAT flow transformer: velocity of the 8-channel structured latent on the occupied voxels.

Official checkpoint: `slat_generator.ckpt`, keys under `_base_models.generator.reverse_fn.backbone.`.

Shapes: N fine voxels (64^3 grid), M coarse voxels (after 2x down-sampling), B batch items, T condition
tokens, C model channels, Ci the I/O block channels, E = C the timestep-embedding channels.

    h = input_layer(x)                                  (N, Ci)
    input_blocks: res blocks at 64^3, the last one down-samples to 32^3    -> (M, C), each output kept as a skip
    h += APE(coarse coords)
    blocks: adaLN-modulated transformer blocks, full self-attention over each item's voxels, cross-attention
            to the condition tokens
    out_blocks: res blocks on cat[h, skip], the first one up-samples back to the fine voxels
    out = out_layer(layer_norm(h))                      (N, out_channels)

Batches: coords carry the batch item; several items (e.g. the conditional and unconditional passes with the
same voxels) run in one call, each attending only to its own voxels and its own condition. For guided calls
`guided_kv` gives the unconditional items' cross-attention as the per-block constant it is
(see `attention.GuidedKV`): those items' voxels get no queries and no attention to the condition.
The element-wise chains between matrix products are the functions of `fused`, compiled on CUDA with dynamic
voxel counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from ..sparse.attention import batch_groups, full_attention, full_cross_attention
from ..sparse.conv import SparseConv3d
from ..sparse.resample import downsample, upsample
from ..sparse.tensor import SparseTensor
from .attention import CrossAttention, CrossContext, FeedForwardNet, GuidedKV, SelfAttention, check_guided_rows
from .embeddings import TimestepEmbedder, absolute_position_embedding
from .fused import (
    GatedResidual,
    gated_residual_norm,
    gated_residual_norm_modulate,
    norm_modulate,
    norm_modulate_silu,
    norm_silu,
    residual_norm_modulate,
    varying_rows,
)
from .norms import LayerNorm32, layer_norm32


ConditionKV = list[CrossContext]  # per block: cross-attention (k, v), each (B, T, H, D), or a GuidedKV


@dataclass(frozen=True)
class SlatFlowConfig:
    in_channels: int = 8  # latent channels in
    out_channels: int = 8  # velocity channels out
    model_channels: int = 1024  # C, transformer width (and timestep-embedding width)
    cond_channels: int = 1024  # condition token width
    num_blocks: int = 24  # transformer blocks
    num_heads: int = 16  # attention heads (head dim C / heads)
    mlp_ratio: float = 4.0  # MLP hidden = C * mlp_ratio
    io_block_channels: tuple[int, ...] = (128,)  # widths of the I/O res-block levels, each level halves resolution
    num_io_res_blocks: int = 2  # res blocks per I/O level (the last of each input level down-samples)
    qk_rms_norm: bool = True  # per-head RMS norm on self-attention q and k
    resolution: int = 64  # fine grid size (stored by upstream, unused by forward)

    def __post_init__(self) -> None:
        if self.model_channels % self.num_heads:
            raise ValueError(f"model_channels {self.model_channels} is not divisible by num_heads {self.num_heads}")
        if not self.io_block_channels or self.num_io_res_blocks < 1:
            raise ValueError("SlatFlowConfig needs at least one I/O level and one res block per level")

    @property
    def patch_size(self) -> int:  # total down-sampling between the fine voxels and the transformer
        return 2 ** len(self.io_block_channels)


PRESETS: dict[str, SlatFlowConfig] = {
    "official": SlatFlowConfig(),
    "tiny": SlatFlowConfig(model_channels=32, cond_channels=32, num_blocks=2, num_heads=2, io_block_channels=(16,)),
}


class SlatFlowModel(nn.Module):
    def __init__(self, cfg: SlatFlowConfig):
        super().__init__()
        self.cfg = cfg
        c, io = cfg.model_channels, list(cfg.io_block_channels)
        self.t_embedder = TimestepEmbedder(c)
        self.input_layer = nn.Linear(cfg.in_channels, io[0])
        self.input_blocks = nn.ModuleList()
        for width, next_width in zip(io, io[1:] + [c]):
            self.input_blocks.extend(SparseResBlock(width, c, width) for _ in range(cfg.num_io_res_blocks - 1))
            self.input_blocks.append(SparseResBlock(width, c, next_width, resample="down"))
        self.blocks = nn.ModuleList(
            ModulatedSparseCrossBlock(c, cfg.cond_channels, cfg.num_heads, cfg.mlp_ratio, cfg.qk_rms_norm)
            for _ in range(cfg.num_blocks)
        )
        self.out_blocks = nn.ModuleList()
        for width, prev_width in zip(reversed(io), [c] + list(reversed(io[1:]))):
            self.out_blocks.append(SparseResBlock(prev_width * 2, c, width, resample="up"))
            self.out_blocks.extend(SparseResBlock(width * 2, c, width) for _ in range(cfg.num_io_res_blocks - 1))
        self.out_layer = nn.Linear(io[0], cfg.out_channels)

    @varying_rows()  # the voxel count differs per object: compiled chains keep their row counts dynamic
    def forward(
        self,
        x: SparseTensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_kv: ConditionKV | None = None,
    ) -> SparseTensor:
        """One velocity evaluation. x: feats (N, in_channels) on coords (N, 4) of B batch items; t: (B,) or a
        scalar, already x1000; cond: (B, T, cond_channels), or its precomputed `cond_kv` (see `condition_kv`).

        Returns the velocity (N, out_channels) on the same voxels (same cache), in x's dtype."""
        if cond_kv is None:
            if cond is None:
                raise ValueError("SlatFlowModel.forward needs `cond` or `cond_kv`")
            cond_kv = self.condition_kv(cond)
        batch = _context_rows(cond_kv[0]) if cond_kv else x.batch_size
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(-1)
        if t.shape[0] != batch or x.batch_size != batch:
            raise InputError(
                f"SlatFlowModel needs t (B,), a condition of B items and voxels of B batch items; got t "
                f"{tuple(t.shape)}, condition batch {batch}, {x.batch_size} batch item(s) in coords"
            )
        dtype = self.blocks[0].adaLN_modulation[1].weight.dtype if len(self.blocks) else self.input_layer.weight.dtype

        # 1. Input layer, timestep embedding
        h = x.replace(self.input_layer(x.feats.to(self.input_layer.weight.dtype)).to(dtype))  # (N, Ci)
        t_emb = self.t_embedder(t).to(dtype)  # (B, C)

        # 2. Input res blocks (64^3 -> 32^3), keeping every output as a skip
        skips = []
        for block in self.input_blocks:
            h = block(h, t_emb)
            skips.append(h.feats)

        # 3. Absolute position embedding of the coarse voxels, transformer blocks
        ape = absolute_position_embedding(h.coords[:, 1:], self.cfg.model_channels)  # (M, C)
        h = h.replace(h.feats + ape.to(dtype))
        residual = None
        for block, kv in zip(self.blocks, cond_kv):
            h, residual = block(h, t_emb, kv, residual)
        if residual is not None:
            h = h.replace(residual.add_to(h.feats))

        # 4. Output res blocks on cat[h, skip] (32^3 -> 64^3)
        for block, skip in zip(self.out_blocks, reversed(skips)):
            h = block(h.replace(torch.cat([h.feats, skip], dim=1)), t_emb)  # (·, 2 * width)

        # 5. Output layer after a non-affine layer norm
        out = layer_norm32(h.feats, eps=1e-5).to(self.out_layer.weight.dtype)  # F.layer_norm's default eps
        return h.replace(self.out_layer(out).to(x.dtype))

    def condition_kv(self, cond: torch.Tensor) -> ConditionKV:
        """Cross-attention keys/values (B, T, H, D) of every block for `cond` (B, T, cond_channels).

        They do not change across sampler steps: compute once per condition batch and pass as `cond_kv`."""
        if cond.ndim != 3 or cond.shape[-1] != self.cfg.cond_channels:
            raise InputError(f"SlatFlowModel needs cond (B, T, {self.cfg.cond_channels}), got {tuple(cond.shape)}")
        return [block.cross_attn.kv(cond.to(block.cross_attn.to_kv.weight.dtype)) for block in self.blocks]

    def guided_kv(self, kv: ConditionKV, null_rows: int | None = None) -> ConditionKV:
        """The context of guided calls [B conditional items; `null_rows` (default B) items with all-zero
        condition] from `kv = condition_kv(cond)` of the conditional items: the same velocity as
        `condition_kv(torch.cat([cond, cond * 0]))`, holding kv's tensors (no copy) and per block the constant
        cross-attention output of an all-zero condition."""
        return [block.cross_attn.guided(*kv_block, null_rows) for block, kv_block in zip(self.blocks, kv)]


class SparseResBlock(nn.Module):
    """[down|up-sample] -> LN -> SiLU -> conv1 -> LN * (1 + scale(t)) + shift(t) -> SiLU -> conv2, + skip."""

    def __init__(self, in_channels: int, emb_channels: int, out_channels: int, resample: str = "none"):
        super().__init__()
        if resample not in ("none", "down", "up"):
            raise ValueError(f"resample must be 'none', 'down' or 'up', got {resample!r}")
        self.resample = resample
        self.norm1 = LayerNorm32(in_channels, eps=1e-6)
        self.conv1 = SparseConv3d(in_channels, out_channels, 3)
        self.norm2 = LayerNorm32(out_channels, elementwise_affine=False, eps=1e-6)
        self.conv2 = SparseConv3d(out_channels, out_channels, 3)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.skip_connection = nn.Linear(in_channels, out_channels) if in_channels != out_channels else nn.Identity()

    def forward(self, x: SparseTensor, t_emb: torch.Tensor) -> SparseTensor:
        scale, shift = self.emb_layers(t_emb).to(x.dtype).chunk(2, dim=1)  # (B, Co) each
        if self.resample == "down":
            x = downsample(x, 2)
        elif self.resample == "up":
            x = upsample(x, 2)
        norm1, norm2 = self.norm1, self.norm2
        h = self.conv1(x.replace(norm_silu(x.feats, norm1.weight, norm1.bias, norm1.eps)))
        h = self.conv2(h.replace(norm_modulate_silu(h.feats, shift, scale, x.batch_index, norm2.eps)))
        return h.replace(h.feats + self.skip_connection(x.feats))


class ModulatedSparseCrossBlock(nn.Module):
    """adaLN-modulated self-attention (gated), un-gated cross-attention with an affine norm, gated MLP."""

    def __init__(self, channels: int, cond_channels: int, num_heads: int, mlp_ratio: float, qk_rms_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfAttention(channels, num_heads, qk_rms_norm=qk_rms_norm)
        self.cross_attn = CrossAttention(channels, cond_channels, num_heads)
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def forward(
        self, x: SparseTensor, t_emb: torch.Tensor, kv: CrossContext, residual: GatedResidual | None = None
    ) -> tuple[SparseTensor, GatedResidual]:
        """x: the voxels' features, before the previous block's gated MLP `residual` (None for the first block).

        Returns this block's output before its own gated MLP residual, and that residual: the next block adds it
        in the same pass as its first norm (`gated_residual_norm_modulate`), which saves a read and a write of the
        activations per block; after the last block `GatedResidual.add_to` adds it."""
        # Voxels as (G, L, C) with their modulation (G, 1 | L, 6C): G = B items of L voxels each when the items
        # are contiguous and of equal size (no per-voxel copy of the modulation), else G = 1, per-voxel rows.
        n, c = x.feats.shape
        mods = self.adaLN_modulation(t_emb)  # (B, 6C)
        dense = _dense_items(x)
        if dense:
            h, mods = x.feats.view(dense, n // dense, c), mods[:, None]  # (B, L, C), (B, 1, 6C)
        else:
            h, mods = x.feats[None], mods.index_select(0, x.batch_index)[None]  # (1, N, C), (1, N, 6C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=-1)

        # 1. The previous block's gated MLP residual, then self-attention over all voxels of the item
        if residual is None:
            a = norm_modulate(h, shift_msa, scale_msa, self.norm1.eps)
        else:
            h, a = gated_residual_norm_modulate(h, residual.gate, residual.update, shift_msa, scale_msa,
                                                self.norm1.eps)
        q, k, v = (t.reshape(n, self.num_heads, -1) for t in self.self_attn.qkv(a))  # (N, H, D) each
        a = self.self_attn.to_out(full_attention(q, k, v, x)).view_as(h)

        # 2. Gated residual, cross-attention to the condition tokens
        h, a = self._cross_attention(h, gate_msa, a, x, kv, shift_mlp, scale_mlp)

        # 3. MLP, gated: left to the next block
        return x.replace(h.view(n, c)), GatedResidual(gate_mlp, self.mlp(a))

    def _cross_attention(
        self,
        h: torch.Tensor,
        gate: torch.Tensor,
        a: torch.Tensor,
        x: SparseTensor,
        context: CrossContext,
        shift: torch.Tensor,
        scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h (G, L, C) + gate · a (the self-attention output), + cross_attn(norm2(that)) for the voxels of x;
        returned with the MLP's input, norm3(·) · (1 + scale) + shift. The voxels of the unconditional items of a
        guided batch (the last ones: coarse voxels are sorted by batch item) add the layer's constant instead."""
        norm = self.norm2
        if isinstance(context, GuidedKV):
            check_guided_rows(context, x.batch_size)
            x = _leading_items(x, context.k.shape[0])  # the conditional items' voxels
            (k, v), null_out = (context.k, context.v), context.null_out
        else:
            (k, v), null_out = context, None
        h, c = gated_residual_norm(h, gate, a, norm.weight, norm.bias, norm.eps)  # (G, L, C) each
        c = c.reshape(-1, c.shape[-1])[: x.num_voxels]  # (m, C) the voxels that attend
        q = self.cross_attn.to_q(c).unflatten(1, (self.num_heads, -1))  # (m, H, D)
        a = self.cross_attn.to_out(full_cross_attention(q, k, v, x))  # k, v: (B, T, H, D) each -> (m, C)
        return residual_norm_modulate(h, a, null_out, shift, scale, self.norm3.eps)


def _context_rows(context: CrossContext) -> int:
    return context.rows if isinstance(context, GuidedKV) else context[0].shape[0]


def _dense_items(x: SparseTensor) -> int | None:
    """B when the voxels are B batch items in order (item b first), all of one size; else None (cached)."""
    groups = batch_groups(x)
    return groups.dense[0] if groups.dense is not None and groups.dense_batch is None else None


def _leading_items(x: SparseTensor, items: int) -> SparseTensor:
    """The voxels of batch items 0 … items − 1 as a tensor of their own (cached on x), which must be x's first
    rows, as they are on the coarse (sorted) voxels the transformer runs on."""

    def build() -> SparseTensor:
        inside = x.batch_index < items  # (N,)
        m = int(inside.sum())
        if not bool(inside[:m].all()):
            raise InputError("guided cross-attention needs the conditional items' voxels first (sort by batch item)")
        return SparseTensor(x.coords[:m], x.feats.new_empty(m, 0))

    return x.cached(("leading_items", items), build)


class SlatVelocity:
    """Adapter for `engine.sampling.sample`: latents (B, N, C) on ONE voxel set -> velocity (B, N, C).

    Batch item b occupies rows b·N … (b+1)·N − 1 of the sparse tensor (the voxels repeated, batch column b), so
    B items of identical voxels need no padding anywhere. One SparseTensor (with its cache) is kept per batch
    size, so neighbour maps and resampling maps are built once for the whole sampling run.
    `condition`: a (B, T, C) tensor or `model.condition_kv(...)` of it. `d` must be None (no shortcut model)."""

    def __init__(self, model: SlatFlowModel, coords: torch.Tensor):
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise InputError(f"SlatVelocity needs coords (N, 4) [batch, x, y, z], got {tuple(coords.shape)}")
        self.model = model
        self.coords = coords.to(torch.int32)  # (N, 4); the batch column is replaced per item
        self._templates: dict[int, SparseTensor] = {}

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None, condition: torch.Tensor | ConditionKV
    ) -> torch.Tensor:
        if d is not None:
            raise InputError("the SLAT flow has no step-size (d) input; sample it with takes_d=False")
        b, n, c = x.shape
        voxels = self._voxels(b, x.device)
        kv = self.model.condition_kv(condition) if isinstance(condition, torch.Tensor) else condition
        out = self.model(voxels.replace(x.reshape(b * n, c)), t, cond_kv=kv)  # (B*N, C_out)
        return out.feats.reshape(b, n, -1)

    def _voxels(self, batch: int, device: torch.device) -> SparseTensor:
        if batch not in self._templates:
            coords = self.coords.to(device)
            item = torch.arange(batch, dtype=torch.int32, device=device).repeat_interleave(coords.shape[0])
            stacked = torch.cat([item[:, None], coords[:, 1:].repeat(batch, 1)], dim=1)  # (B*N, 4)
            self._templates[batch] = SparseTensor(stacked, torch.empty(stacked.shape[0], 0, device=device))
        return self._templates[batch]
