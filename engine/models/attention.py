"""Attention and MLP pieces with upstream parameter names (to_qkv / to_q / to_kv / to_out, mlp.0 / mlp.2).

Shapes: B batch, L query tokens, S key tokens, C channels, H heads, D = C // H head dim, R rows.
All attention goes through F.scaled_dot_product_attention (flash / cuDNN / memory-efficient kernels on GPU;
`attention_kernels` sets which one PyTorch tries first).

Guided (classifier-free) sampling runs rows [conditional; unconditional] in one batch, and the unconditional
rows' condition tokens are all zero. For such a row a cross-attention layer's keys are all bias_k and its values
all bias_v: the softmax is uniform whatever the query, every head returns bias_v, and the layer's output is the
constant to_out(bias_v) for every token. `GuidedKV` carries the conditional rows' keys/values and that constant,
so the unconditional rows need no queries, no attention and no keys/values of their own.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .fused import normed_qkv
from .norms import rms_norm_heads

KV = tuple[torch.Tensor, torch.Tensor]  # cross-attention keys, values, each (B, S, H, D)


@dataclass(frozen=True)
class GuidedKV:
    """Cross-attention context of a guided batch: B conditional rows, then `null_rows` rows whose condition
    tokens are all zero (see the module docstring). `k`/`v` are the conditional rows' own keys/values (the same
    tensors the unguided calls use: held once)."""

    k: torch.Tensor  # (B, S, H, D) keys of the conditional rows
    v: torch.Tensor  # (B, S, H, D) values of the conditional rows
    null_out: torch.Tensor  # (C,) the layer's output for every token of an unconditional row: to_out(bias_v)
    null_rows: int  # R unconditional rows after the B conditional ones

    @property
    def rows(self) -> int:
        """B + R, the batch this context describes."""
        return self.k.shape[0] + self.null_rows


CrossContext = Union[KV, GuidedKV]  # what a cross-attention layer attends to: (k, v) of every row, or GuidedKV


class MultiHeadRMSNorm(nn.Module):
    """RMS norm per head: normalize(x) * gamma * sqrt(D), statistics in float32. gamma: (H, D)."""

    def __init__(self, head_dim: int, num_heads: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(num_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_heads(x, self.gamma)  # x: (B, L, H, D)


def qk_rms_norm(qk: torch.Tensor, q_norm: MultiHeadRMSNorm, k_norm: MultiHeadRMSNorm) -> torch.Tensor:
    """q and k of a (B, L, 2, H, D) view (the first two thirds of a to_qkv output) through their RMS norms in one
    pass -> (B, L, 2, H, D)."""
    return rms_norm_heads(qk, torch.stack([q_norm.gamma, k_norm.gamma]))  # gamma (2, H, D)


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
        """x: (B, L, C) -> q, k, v each (B, L, H, D), q/k normalised when configured (together, one pass)."""
        b, l, _ = x.shape
        qkv = self.to_qkv(x).reshape(b, l, 3, self.num_heads, -1)  # (B, L, 3, H, D)
        if not self.qk_rms_norm:
            return qkv.unbind(dim=2)
        return normed_qkv(qkv, self.q_rms_norm.gamma, self.k_rms_norm.gamma)  # (B, L, H, D) each

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

    def guided(self, k: torch.Tensor, v: torch.Tensor, null_rows: int | None = None) -> GuidedKV:
        """The context of a guided batch [conditional rows with keys/values k, v; `null_rows` (default: as many)
        rows with all-zero condition tokens], holding k and v themselves (no copy)."""
        return GuidedKV(k, v, self.null_output(), k.shape[0] if null_rows is None else null_rows)

    def null_output(self) -> torch.Tensor:
        """(C,) the output for a context of all-zero tokens: keys all equal, uniform softmax, every head returns
        bias_v, so the output is to_out(bias_v) for every query."""
        c = self.to_out.in_features
        bias = self.to_kv.bias
        bias_v = bias[c:] if bias is not None else self.to_out.weight.new_zeros(c)  # to_kv rows: [k (C); v (C)]
        return self.to_out(bias_v.to(self.to_out.weight.dtype))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attend(x, *self.kv(context))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x: (B, L, C) against precomputed k, v (B, S, H, D) from `kv` -> (B, L, C)."""
        b, l, _ = x.shape
        q = self.to_q(x).reshape(b, l, self.num_heads, -1)  # (B, L, H, D)
        return self.to_out(attention(q, k, v))


# The first layer's bias and GELU(tanh) as the epilogue of its matrix product (cuBLASLt) on CUDA in inference:
# saves one read and write of the (R, 4C) hidden activations per block. THREEDFY_GELU_EPILOGUE=0 turns it off.
GELU_EPILOGUE: bool = os.environ.get("THREEDFY_GELU_EPILOGUE", "1").strip() != "0"


class FeedForwardNet(nn.Module):
    """Linear(C, C*ratio) -> GELU(tanh) -> Linear(C*ratio, C), stored as `mlp.0` / `mlp.2`."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.mlp[0], self.mlp[2]
        if GELU_EPILOGUE and x.is_cuda and not torch.is_grad_enabled() and fc1.bias is not None:
            # torch's CUDA kernel for this op applies GELU's tanh form, as the module does (its CPU one: erf).
            rows = x.reshape(-1, x.shape[-1])
            hidden = torch._addmm_activation(fc1.bias, rows, fc1.weight.t(), use_gelu=True)  # (R, 4C)
            return fc2(hidden).reshape(*x.shape[:-1], fc2.out_features)
        return self.mlp(x)


def check_guided_rows(context: GuidedKV, rows: int) -> None:
    if rows != context.rows:
        raise ValueError(
            f"a guided cross-attention context describes {context.k.shape[0]} conditional + {context.null_rows} "
            f"unconditional rows, but the batch has {rows}"
        )


@contextmanager
def attention_kernels(order: Sequence[str] | None) -> Iterator[None]:
    """Inside: F.scaled_dot_product_attention tries the kernels in `order` ("cudnn", "flash", "efficient",
    "math") first, then the rest in PyTorch's own order, so an input no preferred kernel takes still runs.
    None or empty: PyTorch's default choice. Outputs agree to the kernels' rounding."""
    if not order:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}  # fmt: skip
    unknown = [o for o in order if o not in names]
    if unknown:
        raise ValueError(f"unknown attention kernel(s) {unknown}; choose from {', '.join(names)}")
    preferred = [names[o] for o in order]
    backends = preferred + [b for b in names.values() if b not in preferred]
    with sdpa_kernel(backends, set_priority=True):
        yield


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: (B, L, H, D), k/v: (B, S, H, D) -> (B, L, H*D) with the standard 1/sqrt(D) scale."""
    b, l, h, d = q.shape
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, L, D)
    return out.transpose(1, 2).reshape(b, l, h * d)
