"""Normalisation layers and functions (LayerNorm, GroupNorm, per-head RMS norm) with float32 statistics whatever the
weights' dtype (bf16/fp16 on GPU)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm32(nn.LayerNorm):
    """LayerNorm over the last dim, computed in float32, returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm over (N, C, *) computed in float32, returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def layer_norm32(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Affine-free LayerNorm over the last dim in float32, returned in the input's dtype."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def rms_norm_heads(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """normalize(x, dim=-1) · sqrt(D) · gamma for x (..., D) in any layout, gamma broadcastable to x (e.g. (H, D),
    or (2, H, D) for q and k of a (B, L, 2, H, D) view normalised together), returned contiguous in x's dtype.

    The norm is one float32-accumulating reduction that reads x as it lies (no copy); x · sqrt(D) / ‖x‖ is computed
    in float32 and rounded once into x's dtype, then · gamma. (A fused rms_norm kernel handles rows of D = 64 poorly:
    one row per thread block.)"""
    d = x.shape[-1]
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)  # (..., 1)
    if torch.is_grad_enabled() and (x.requires_grad or gamma.requires_grad):  # differentiable form
        return (x.float() / norm.clamp_min(1e-12) * (gamma.float() * d**0.5)).to(x.dtype)
    inv = norm.clamp_min_(1e-12).reciprocal_().mul_(d**0.5)  # sqrt(D) / max(‖x‖, 1e-12), as F.normalize clamps
    out = torch.mul(x, inv, out=torch.empty(x.shape, dtype=x.dtype, device=x.device))  # float32 math, one rounding
    return out.mul_(gamma.to(x.dtype))
