"""Attention and MLP pieces with upstream parameter names (to_qkv / to_q / to_kv / to_out, mlp.0 / mlp.2).

Shapes: B batch, L query tokens, S key tokens, C channels, H heads, D = C // H head dim.
All attention goes through F.scaled_dot_product_attention (flash / memory-efficient kernels on GPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadRMSNorm(nn.Module):
    """RMS norm per head: normalize(x) * gamma * sqrt(D), computed in float32. gamma: (H, D)."""

    def __init__(self, head_dim: int, num_heads: int):
        super().__init__()
        self.scale = head_dim**0.5
        self.gamma = nn.Parameter(torch.ones(num_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, L, H, D)
        return (F.normalize(x.float(), dim=-1) * self.gamma * self.scale).to(x.dtype)


class SelfAttention(nn.Module):
    """to_qkv -> optional q/k RMS norm -> SDPA -> to_out."""

    def __init__(self, channels: int, num_heads: int, qk_rms_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(channels, channels * 3)
        self.qk_rms_norm = qk_rms_norm
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(channels // num_heads, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(channels // num_heads, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, L, C) -> q, k, v each (B, L, H, D), q/k normalised when configured."""
        b, l, _ = x.shape
        q, k, v = self.to_qkv(x).reshape(b, l, 3, self.num_heads, -1).unbind(dim=2)
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        return self.to_out(attention(q, k, v))


class CrossAttention(nn.Module):
    """Queries from x (C), keys/values from a context (C_ctx): to_q, to_kv, to_out; no q/k norm."""

    def __init__(self, channels: int, context_channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(context_channels, channels * 2)
        self.to_out = nn.Linear(channels, channels)

    def kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context: (B, S, C_ctx) -> k, v each (B, S, H, D). Constant across sampler steps: cacheable."""
        b, s, _ = context.shape
        k, v = self.to_kv(context).reshape(b, s, 2, self.num_heads, -1).unbind(dim=2)
        return k, v

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attend(x, *self.kv(context))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x: (B, L, C) against precomputed k, v (B, S, H, D) from `kv` -> (B, L, C)."""
        b, l, _ = x.shape
        q = self.to_q(x).reshape(b, l, self.num_heads, -1)  # (B, L, H, D)
        return self.to_out(attention(q, k, v))


class FeedForwardNet(nn.Module):
    """Linear(C, C*ratio) -> GELU(tanh) -> Linear(C*ratio, C), stored as `mlp.0` / `mlp.2`."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: (B, L, H, D), k/v: (B, S, H, D) -> (B, L, H*D) with the standard 1/sqrt(D) scale."""
    b, l, h, d = q.shape
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, L, D)
    return out.transpose(1, 2).reshape(b, l, h * d)
