"""Rectified-flow Euler sampler used by both stages (spec §6.4 and §9).

t runs from 0 (noise) to 1 (data); the network predicts the velocity x1 − x0 and is called with t·1000.
The grid is linspace(0, 1, steps + 1) warped by t / (1 + (r − 1)(1 − t)) (r = rescale_t), the velocity is taken
at the left end of each step. Classifier-free guidance, v = (1 + s)·v_cond − s·v_uncond on every output, applies
while lo ≤ 1000·t ≤ hi; its conditional and unconditional passes go through the network as ONE batch
[cond rows; uncond rows]. Shortcut (distilled) mode feeds d = 1/steps (as 1000·d) and never guides.

The latent state is a tensor (stage 2) or a dict of tensors (stage 1); both are handled alike. The sampler knows
nothing about the network: it calls `velocity(x, t, d, condition)` with t (B,) and d (B,) or None, float32,
already ×1000, and passes `condition` through untouched (a tensor, precomputed keys/values, anything).
Noise comes from the caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar, Union

import torch

from .errors import Cancelled

Latent = TypeVar("Latent", torch.Tensor, dict[str, torch.Tensor])
VelocityFn = Callable[[Any, torch.Tensor, Union[torch.Tensor, None], Any], Any]
ProgressFn = Callable[[int, int, Any], None]  # (steps done, steps in all, state after that step)


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 25  # Euler steps (network evaluations: steps, plus one more per guided step)
    rescale_t: float = 1.0  # time warp r: t / (1 + (r − 1)(1 − t)); 1 = linear
    cfg_strength: float = 0.0  # s in v = (1 + s)·v_cond − s·v_uncond; 0 = no unconditional pass
    cfg_interval: tuple[float, float] = (0.0, 500.0)  # guide while lo ≤ 1000·t ≤ hi (inclusive), t·1000 units
    takes_d: bool = False  # the network takes a step size d (stage 1: d = 0, or 1/steps in shortcut mode)
    shortcut: bool = False  # distilled mode: d = 1/steps, guidance off (needs takes_d)
    time_scale: float = 1000.0  # t and d are multiplied by this before the network sees them


STAGE1 = SamplerSettings(steps=25, rescale_t=3.0, cfg_strength=7.0, takes_d=True)  # SS flow (geometry)
STAGE2 = SamplerSettings(steps=25, rescale_t=1.0, cfg_strength=1.0)  # SLAT flow (texture & refinement)


def sample(
    velocity: VelocityFn,
    noise: Latent,
    condition: Any,
    settings: SamplerSettings,
    *,
    guided_condition: Any = None,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Latent:
    """Integrate from `noise` (t = 0) to the data latent (t = 1) and return it.

    `condition` goes with batch-B calls. `guided_condition` goes with the batch-2B guided calls and must describe
    the rows [conditional; unconditional]; when `condition` is a tensor it defaults to cat([c, c·0]) (upstream's
    unconditional pass zeroes the condition tokens). `progress(k, steps, x)` runs after step k; `cancelled()` is
    asked before every step and raises `Cancelled` when true.
    """
    if settings.shortcut and not settings.takes_d:
        raise ValueError("SamplerSettings.shortcut needs takes_d=True (the network must take a step size d)")
    guidance = settings.cfg_strength if not settings.shortcut else 0.0
    if guidance != 0 and guided_condition is None:
        if not isinstance(condition, torch.Tensor):
            raise ValueError("sample: guidance on a non-tensor condition needs guided_condition=[cond; uncond]")
        guided_condition = torch.cat([condition, condition * 0], dim=0)  # (2B, T, C)

    leaf = _first_leaf(noise)
    batch, device = leaf.shape[0], leaf.device
    grid = time_grid(settings.steps, settings.rescale_t)
    d = 1.0 / settings.steps if settings.shortcut else 0.0
    lo, hi = settings.cfg_interval

    x = noise
    for k in range(settings.steps):
        if cancelled is not None and cancelled():
            raise Cancelled(f"sampling cancelled before step {k + 1} of {settings.steps}")
        t_net = _float32(settings.time_scale * grid[k])  # what the network sees, decided on the host (no sync)
        d_net = _float32(settings.time_scale * d)
        guided = guidance != 0 and lo <= t_net <= hi

        if guided:
            rows = 2 * batch  # [cond; uncond]
            x_in = _map(lambda a: torch.cat([a, a], dim=0), x)  # (2B, ...)
            v_both = velocity(x_in, _rows(t_net, rows, device), _d(settings, d_net, rows, device), guided_condition)
            v = _map(lambda vb: (1 + guidance) * vb[:batch] - guidance * vb[batch:], v_both)
        else:
            v = velocity(x, _rows(t_net, batch, device), _d(settings, d_net, batch, device), condition)

        dt = grid[k + 1] - grid[k]
        x = _map(lambda a, va: a + va.to(a.dtype) * dt, x, v)
        if progress is not None:
            progress(k + 1, settings.steps, x)
    return x


def time_grid(steps: int, rescale_t: float = 1.0) -> list[float]:
    """steps + 1 times from 0 to 1 (float64): linspace warped by t / (1 + (rescale_t − 1)(1 − t))."""
    s = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return (s / (1 + (rescale_t - 1) * (1 - s))).tolist()


def _float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def _rows(value: float, rows: int, device: torch.device) -> torch.Tensor:
    return torch.full((rows,), value, dtype=torch.float32, device=device)  # (rows,)


def _d(settings: SamplerSettings, d: float, rows: int, device: torch.device) -> torch.Tensor | None:
    return _rows(d, rows, device) if settings.takes_d else None


def _map(fn: Callable[..., torch.Tensor], *trees: Any) -> Any:
    """Apply fn leaf-wise to tensors or to dicts of tensors with the same keys."""
    if isinstance(trees[0], dict):
        return {key: fn(*(tree[key] for tree in trees)) for key in trees[0]}
    return fn(*trees)


def _first_leaf(tree: Any) -> torch.Tensor:
    return next(iter(tree.values())) if isinstance(tree, dict) else tree
