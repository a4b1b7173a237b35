"""Training objectives: rectified-flow matching (both flow stages) and the VAE pieces (both encoders).

Flow matching, in the sampler's convention (`engine/sampling.py`): t runs from 0 (noise x0) to 1 (data x1),
x_t = (1 − t)·x0 + t·x1, and the network predicts the velocity x1 − x0 at x_t, seeing t·1000. Training times are
drawn as the sampler spaces its steps: u ~ U(0, 1) warped by t = u / (1 + (r − 1)(1 − u)) with the stage's
`rescale_t` r (3 for stage 1: more weight near the noise end; 1 for stage 2: uniform). Latents are tensors or
dicts of tensors (stage 1's modalities); `t` must already broadcast against them.

Classifier-free guidance: the unconditional pass of the pipeline multiplies the condition tokens by zero, so
training zeroes the whole condition of a random share of the samples (`drop_condition`).

The stage-1 shortcut step size d stays 0 in training (the d-embedder is kept constant, see `train.py`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

TIME_SCALE = 1000.0  # the networks see t·1000 (and d·1000)


def sample_t(count: int, rescale_t: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(count,) float32 training times in [0, 1): uniform u warped like the sampler's grid."""
    u = torch.rand(count, generator=generator, device=device)
    return u / (1 + (rescale_t - 1) * (1 - u))


def with_early_times(t: torch.Tensor, share: float, bound: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """t with a random `share` of its entries redrawn uniformly from [0, bound). Near the noise end the latent still
    holds almost nothing of the object (stage 2: its colours), so the flow can only take it from the picture; the
    sampler's own spacing trains there too rarely for the flow to learn to look."""
    if share <= 0:
        return t
    early = torch.rand(t.shape, generator=generator, device=t.device) < share
    return torch.where(early, torch.rand(t.shape, generator=generator, device=t.device) * bound, t)


def noise_like(x: Any, generator: torch.Generator | None = None) -> Any:
    """Standard normal noise shaped like a tensor or a dict of tensors (float32)."""
    if isinstance(x, dict):
        return {k: noise_like(v, generator) for k, v in x.items()}
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)


def interpolate(x0: Any, x1: Any, t: Any) -> Any:
    """x_t = (1 − t)·x0 + t·x1 leaf-wise; t a tensor broadcasting against every leaf, or a dict of such."""
    if isinstance(x0, dict):
        return {k: interpolate(x0[k], x1[k], t[k] if isinstance(t, dict) else t) for k in x0}
    return (1 - t) * x0 + t * x1


def velocity_target(x0: Any, x1: Any) -> Any:
    """x1 − x0 leaf-wise."""
    if isinstance(x0, dict):
        return {k: x1[k] - x0[k] for k in x0}
    return x1 - x0


def flow_loss(
    predicted: Any, target: Any, weights: dict[str, float] | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared velocity error: for dicts the weighted sum of each modality's mean (weights default 1).

    Returns (loss, {modality: its unweighted mean, detached}); a plain tensor reports under "velocity"."""
    if not isinstance(predicted, dict):
        loss = F.mse_loss(predicted.float(), target.float())
        return loss, {"velocity": loss.detach()}
    weights = weights or {}
    terms = {k: F.mse_loss(predicted[k].float(), target[k].float()) for k in predicted}
    loss = sum(weights.get(k, 1.0) * v for k, v in terms.items())
    return loss, {k: v.detach() for k, v in terms.items()}


def drop_condition(cond: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """cond (B, T, C) with the tokens of a random `probability` share of the rows set to zero (CFG training)."""
    if probability <= 0:
        return cond
    keep = torch.rand(cond.shape[0], generator=generator, device=cond.device) >= probability  # (B,)
    return cond * keep[:, None, None].to(cond.dtype)


def gaussian_sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A reparameterised draw mean + exp(logvar / 2)·ε."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over all elements."""
    return 0.5 * (mean.float().square() + logvar.float().exp() - 1 - logvar.float()).mean()
