"""Stage-1 geometry flow: the Mixture-of-Transformers (MoT) velocity model over the sparse-structure latent.

Upstream `SparseStructureFlowTdfyWrapper` (spec §6). Two token streams run through shared-modulation blocks:

* `shape`: the 16³×8 shape latent as res³ tokens (token n = x·res² + y·res + z), plus a fixed sin/cos table;
* `6drotation_normalized`: the four pose tokens [6drotation_normalized, translation, scale, translation_scale],
  one token each, plus a learnt position embedding each.

Per block the adaLN modulation is shared; norms, attention and MLP are per stream. The shape stream attends only
to itself; pose queries attend to [pose; shape]. Cross-attention to the condition tokens is un-gated. The
unconditional ("cfg") pass is the same call with the condition multiplied by zero; for guided calls
[cond; uncond], `guided_kv` gives its cross-attention as the per-block constant it is (see `attention.GuidedKV`).
The element-wise chains between matrix products (norm + modulation, gated residual + norm, q/k norm + the pose
keys) are the functions of `fused`, compiled on CUDA.

Shapes: B batch, N shape tokens (res³), P pose tokens (4), T condition tokens, C model channels,
C_cond condition channels, H heads, D = C // H head dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import (
    CrossAttention,
    CrossContext,
    FeedForwardNet,
    GuidedKV,
    MultiHeadRMSNorm,
    attention,
    check_guided_rows,
)
from .embeddings import TimestepEmbedder, absolute_position_embedding
from .fused import (
    GatedResidual,
    gated_residual_norm,
    gated_residual_norm_modulate,
    mot_qkv,
    norm_modulate,
    residual_norm_modulate,
)
from .norms import LayerNorm32, layer_norm32

SHAPE = "shape"  # the shape stream and modality
POSE = "6drotation_normalized"  # the pose stream is named after its first modality
POSE_MODALITIES = ("6drotation_normalized", "translation", "scale", "translation_scale")  # token order in the stream
STREAMS = (SHAPE, POSE)
BLOCK_NORM_EPS = 1e-6  # norm1/norm2/norm3 inside the blocks
OUT_NORM_EPS = 1e-5  # the affine-free norm before each out_layer (a different eps upstream, checked by parity)

# Cross-attention context for one condition batch: per block, per stream, (k, v) each (B, T, H, D), or for guided
# calls a GuidedKV (the conditional rows' k, v and the unconditional rows' constant output).
ConditionKV = list[dict[str, CrossContext]]


@dataclass(frozen=True)
class SSFlowConfig:
    model_channels: int = 1024  # C, width of both streams
    cond_channels: int = 1024  # C_cond, width of the condition tokens
    num_blocks: int = 24  # MoT blocks
    num_heads: int = 16  # H (head dim C // H = 64)
    mlp_ratio: float = 4.0  # MLP hidden = C * mlp_ratio
    resolution: int = 16  # side of the shape latent grid; the shape stream has resolution³ tokens
    shape_channels: int = 8  # channels of the shape latent (B, resolution³, 8)
    pose_channels: tuple[int, ...] = (6, 3, 3, 1)  # channels of POSE_MODALITIES, each latent (B, 1, c)


PRESETS: dict[str, SSFlowConfig] = {
    "official": SSFlowConfig(),
    "tiny": SSFlowConfig(model_channels=32, cond_channels=32, num_blocks=2, num_heads=2, resolution=16),
}


class SSFlow(nn.Module):
    """latents {modality: (B, L_m, c_m)}, t (B,) ×1000, cond (B, T, C_cond), d (B,) ×1000 or None -> velocities."""

    def __init__(self, cfg: SSFlowConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.model_channels
        self.t_embedder = TimestepEmbedder(c)
        self.d_embedder = TimestepEmbedder(c)
        self.latent_mapping = nn.ModuleDict({SHAPE: ShapeLatent(cfg.shape_channels, c, cfg.resolution)})
        for name, channels in zip(POSE_MODALITIES, cfg.pose_channels):
            self.latent_mapping[name] = PoseLatent(channels, c)
        self.blocks = nn.ModuleList(
            MoTBlock(c, cfg.cond_channels, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_blocks)
        )

    def forward(
        self,
        latents: dict[str, torch.Tensor],
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        d: torch.Tensor | None = None,
        cond_kv: ConditionKV | None = None,
    ) -> dict[str, torch.Tensor]:
        """One velocity evaluation. Give either `cond` or its precomputed `cond_kv` (from `condition_kv`).

        `d` is the shortcut step size ×1000; when None the d-embedding term is left out entirely (upstream does the
        same when `d` is not passed; the pipeline always passes it, 0 in normal sampling).
        """
        if cond_kv is None:
            if cond is None:
                raise ValueError("SSFlow.forward needs `cond` or `cond_kv`")
            cond_kv = self.condition_kv(cond)

        # 1. Tokens per stream
        x = {
            SHAPE: self.latent_mapping[SHAPE](latents[SHAPE]),  # (B, N, C)
            POSE: torch.cat([self.latent_mapping[m](latents[m]) for m in POSE_MODALITIES], dim=1),  # (B, P, C)
        }

        # 2. Time conditioning
        t_emb = self.t_embedder(t)  # (B, C)
        if d is not None:
            t_emb = t_emb + self.d_embedder(d)

        # 3. Blocks
        residual = None
        for block, kv in zip(self.blocks, cond_kv):
            x, residual = block(x, t_emb, kv, residual)
        if residual is not None:
            x = {s: residual[s].add_to(x[s]) for s in STREAMS}

        # 4. Velocities per modality, in the latents' dtype
        out = {SHAPE: self.latent_mapping[SHAPE].output(x[SHAPE]).to(latents[SHAPE].dtype)}
        pose = x[POSE].split(1, dim=1)  # P × (B, 1, C)
        for i, m in enumerate(POSE_MODALITIES):
            out[m] = self.latent_mapping[m].output(pose[i]).to(latents[m].dtype)
        return out

    def velocity(
        self,
        latents: dict[str, torch.Tensor],
        t: torch.Tensor,
        d: torch.Tensor | None,
        condition: torch.Tensor | ConditionKV,
    ) -> dict[str, torch.Tensor]:
        """Adapter for `engine.sampling.sample`: `condition` is a (B, T, C_cond) tensor or `condition_kv(...)` of it.

        Pass precomputed keys/values to the sampler, computed once per run: `kv = condition_kv(cond)` and, for
        guided steps, `guided_kv(kv)` (the same as `condition_kv(torch.cat([cond, cond * 0]))`, without computing
        the unconditional rows' cross-attention or holding their keys/values).
        """
        kv = self.condition_kv(condition) if isinstance(condition, torch.Tensor) else condition
        return self(latents, t, d=d, cond_kv=kv)

    def condition_kv(self, cond: torch.Tensor) -> ConditionKV:
        """Cross-attention keys/values of every block and stream for `cond` (B, T, C_cond).

        They do not change across sampler steps: compute once per condition batch and pass as `cond_kv`.
        """
        cond = cond.to(self.blocks[0].cross_attn[SHAPE].to_kv.weight.dtype)
        return [{s: block.cross_attn[s].kv(cond) for s in STREAMS} for block in self.blocks]

    def guided_kv(self, kv: ConditionKV, null_rows: int | None = None) -> ConditionKV:
        """The context of guided calls [B conditional rows; `null_rows` (default B) rows with all-zero condition]
        from `kv = condition_kv(cond)` of the conditional rows: the same velocity as
        `condition_kv(torch.cat([cond, cond * 0]))`, holding kv's tensors (no copy) and per block and stream
        the constant cross-attention output of an all-zero condition."""
        return [
            {s: block.cross_attn[s].guided(*kv_block[s], null_rows) for s in STREAMS}
            for block, kv_block in zip(self.blocks, kv)
        ]

    def reset_buffers(self) -> None:
        """Recompute the fixed shape position table (after `to_empty` from a meta-device build)."""
        self.latent_mapping[SHAPE].reset_buffers()


class ShapeLatent(nn.Module):
    """Shape latent <-> tokens: input_layer + fixed sin/cos table over the ij-ordered grid; LN + out_layer back."""

    def __init__(self, in_channels: int, channels: int, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.input_layer = nn.Linear(in_channels, channels)
        self.out_layer = nn.Linear(channels, in_channels)
        self.register_buffer("pos_emb", _grid_position_table(resolution, channels, self.input_layer.weight.device))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(latent.to(self.input_layer.weight.dtype))  # (B, N, C)
        return h + self.pos_emb.to(h.dtype)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_layer(layer_norm32(h, OUT_NORM_EPS).to(self.out_layer.weight.dtype))  # (B, N, c_in)

    def reset_buffers(self) -> None:
        self.pos_emb = _grid_position_table(self.resolution, self.pos_emb.shape[1], self.pos_emb.device).to(
            self.pos_emb.dtype
        )


class PoseLatent(nn.Module):
    """One pose modality (1 token): input_layer + learnt pos_emb (1, C); LN + out_layer back."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.input_layer = nn.Linear(in_channels, channels)
        self.out_layer = nn.Linear(channels, in_channels)
        self.pos_emb = nn.Parameter(torch.zeros(1, channels))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(latent.to(self.input_layer.weight.dtype))  # (B, 1, C)
        return h + self.pos_emb.to(h.dtype)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_layer(layer_norm32(h, OUT_NORM_EPS).to(self.out_layer.weight.dtype))  # (B, 1, c_in)


class MoTBlock(nn.Module):
    """Shared adaLN modulation; per-stream self-attention (MoT pattern), cross-attention and MLP."""

    def __init__(self, channels: int, cond_channels: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))
        self.norm2 = nn.ModuleDict({s: LayerNorm32(channels, eps=BLOCK_NORM_EPS) for s in STREAMS})
        self.self_attn = MoTSelfAttention(channels, num_heads)
        self.cross_attn = nn.ModuleDict({s: CrossAttention(channels, cond_channels, num_heads) for s in STREAMS})
        self.mlp = nn.ModuleDict({s: FeedForwardNet(channels, mlp_ratio) for s in STREAMS})

    def forward(
        self,
        x: dict[str, torch.Tensor],
        t_emb: torch.Tensor,
        kv: dict[str, CrossContext],
        residual: dict[str, GatedResidual] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, GatedResidual]]:
        """x per stream, before the previous block's gated MLP `residual` (None for the first block). Returns this
        block's output before its own gated MLP residual, and that residual, which the next block adds in its
        first norm pass (as `SlatFlowModel`'s blocks do)."""
        mod = self.adaLN_modulation(t_emb).unsqueeze(1)  # (B, 1, 6C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)  # 6 × (B, 1, C)

        # 1. The previous block's gated MLP residual; self-attention (shape: itself; pose: [pose; shape])
        if residual is None:
            normed = {s: norm_modulate(x[s], shift_msa, scale_msa, BLOCK_NORM_EPS) for s in STREAMS}
        else:
            x, normed = dict(x), {}
            for s in STREAMS:
                x[s], normed[s] = gated_residual_norm_modulate(x[s], residual[s].gate, residual[s].update, shift_msa,
                                                               scale_msa, BLOCK_NORM_EPS)
        h = self.self_attn(normed)
        out, pending = {}, {}
        for s in STREAMS:
            # 2. Gated residual, cross-attention to the condition (un-gated, affine norm)
            out[s], h_s = self._cross_attention(s, x[s], gate_msa, h[s], kv[s], shift_mlp, scale_mlp)
            # 3. MLP, gated: left to the next block
            pending[s] = GatedResidual(gate_mlp, self.mlp[s](h_s))
        return out, pending

    def _cross_attention(
        self,
        stream: str,
        x: torch.Tensor,
        gate: torch.Tensor,
        h: torch.Tensor,
        context: CrossContext,
        shift: torch.Tensor,
        scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, C) + gate · h (the self-attention output), + cross_attn(norm2(that)); returned with the MLP's
        input, its norm3 · (1 + scale) + shift. The unconditional rows of a guided batch add the layer's constant
        instead of attending."""
        norm, cross = self.norm2[stream], self.cross_attn[stream]
        b = x.shape[0]
        if isinstance(context, GuidedKV):
            check_guided_rows(context, b)
            b, (k, v), null_out = context.k.shape[0], (context.k, context.v), context.null_out
        else:
            (k, v), null_out = context, None
        x, n = gated_residual_norm(x, gate, h, norm.weight, norm.bias, norm.eps)  # (B + R, L, C) each
        a = cross.attend(n[:b], k, v)  # (b, L, C)
        return residual_norm_modulate(x, a, null_out, shift, scale, BLOCK_NORM_EPS)


class MoTSelfAttention(nn.Module):
    """Per-stream to_qkv / q,k RMS norm / to_out; shape attends to shape, pose attends to [pose; shape]."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        head_dim = channels // num_heads
        self.to_qkv = nn.ModuleDict({s: nn.Linear(channels, 3 * channels) for s in STREAMS})
        self.q_rms_norm = nn.ModuleDict({s: MultiHeadRMSNorm(head_dim, num_heads) for s in STREAMS})
        self.k_rms_norm = nn.ModuleDict({s: MultiHeadRMSNorm(head_dim, num_heads) for s in STREAMS})
        self.to_out = nn.ModuleDict({s: nn.Linear(channels, channels) for s in STREAMS})

    def forward(self, h: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        qkv, gammas = {}, {}
        for s in STREAMS:
            b, l, _ = h[s].shape
            qkv[s] = self.to_qkv[s](h[s]).reshape(b, l, 3, self.num_heads, -1)  # (B, L, 3, H, D)
            gammas[s] = (self.q_rms_norm[s].gamma, self.k_rms_norm[s].gamma)
        # (B, N, H, D) × 3 for the shape stream; pose queries (B, P, H, D), keys/values [pose; shape] (B, P + N, H, D)
        q_s, k_s, v_s, q_p, k_p, v_p = mot_qkv(qkv[SHAPE], qkv[POSE], gammas[SHAPE], gammas[POSE])
        out = {SHAPE: attention(q_s, k_s, v_s), POSE: attention(q_p, k_p, v_p)}  # (B, N | P, C)
        return {s: self.to_out[s](out[s]) for s in STREAMS}


def _grid_position_table(resolution: int, channels: int, device: torch.device) -> torch.Tensor:
    """(res³, C) sin/cos table over the grid positions, ij order (token n = x·res² + y·res + z)."""
    axis = torch.arange(resolution, device=device)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)  # (N, 3)
    return absolute_position_embedding(grid, channels)
