"""A training-only readout of an object's colours from a condition fuser's tokens (not exported).

Why: stage 2 must read an object's colours from its condition tokens, and its loss reaches the fuser only through
the flow's cross-attention. After stage 2's 420 s a linear probe reads the colour from the tokens to 0.072 (stage
1's fuser, which stage 2 starts from: 0.151), while the brightest masked pixel alone gives 0.007
(`scripts/probe_condition_colour.py`). This readout gives the fuser a direct signal: a linear map from the pooled
tokens (mean and max over the tokens, as the probe pools them) to the object's two colour slots, whose L1 error
joins the stage's loss with weight `StageSettings.colour_readout`. A picture does not tell which slot is which, so
the error takes the better of the two orders.
"""
from __future__ import annotations

import torch
from torch import nn


class ColourReadout(nn.Module):
    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        self.linear = nn.Linear(2 * channels, 6)
        nn.init.normal_(self.linear.weight, std=0.01, generator=generator)  # small: the fuser hears it at once
        nn.init.constant_(self.linear.bias, 0.5)  # mid-grey

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(Q, T, C) condition tokens -> (Q, 2, 3) RGB of the two colour slots."""
        pooled = torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=-1).float()  # (Q, 2C)
        return self.linear(pooled).view(-1, 2, 3)


def slots_error(predicted: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Mean absolute RGB error of predicted (Q, 2, 3) against the true slots (Q, 2, 3), in the better order."""
    direct = (predicted - slots).abs().mean(dim=(1, 2))
    swapped = (predicted - slots.flip(1)).abs().mean(dim=(1, 2))
    return torch.minimum(direct, swapped).mean()
