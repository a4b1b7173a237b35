"""Sinusoidal embeddings shared by the flow transformers and the SLAT decoders.

Two conventions exist upstream and both are kept: the timestep embedding is [cos | sin], the absolute
position embedding is [sin | cos] per coordinate.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TimestepEmbedder(nn.Module):
    """Scalar time (already multiplied by 1000) -> C-d vector: 256-d sinusoid -> Linear -> SiLU -> Linear."""

    def __init__(self, channels: int, frequency_channels: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_channels = frequency_channels
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_channels, channels), nn.SiLU(), nn.Linear(channels, channels)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # t: (B,) float -> (B, C)
        return self.mlp(timestep_frequencies(t, self.frequency_channels, self.max_period).to(self.mlp[0].weight.dtype))


def timestep_frequencies(t: torch.Tensor, channels: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) -> (B, channels) as [cos(t f_i) | sin(t f_i)], f_i = max_period^(-i/half)."""
    half = channels // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if channels % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def absolute_position_embedding(coords: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-axis sin/cos embedding of integer or float positions.

    coords: (N, A) positions (A axes, usually 3) -> (N, channels) float32. Each axis gets
    [sin(c f) | cos(c f)] with freq_dim = channels // A // 2 frequencies f_i = 10000^(-i/freq_dim);
    axes are concatenated in order and the result zero-padded to `channels`.
    """
    n, axes = coords.shape
    freq_dim = channels // axes // 2
    freqs = 1.0 / (10000.0 ** (torch.arange(freq_dim, dtype=torch.float32, device=coords.device) / freq_dim))
    args = coords.reshape(-1).float()[:, None] * freqs[None]  # (N*A, freq_dim)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1).reshape(n, -1)  # (N, A*2*freq_dim)
    return F.pad(emb, (0, channels - emb.shape[1]))
