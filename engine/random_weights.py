"""Seeded random weights for any of our networks: smoke runs, tests and benchmarks without a checkpoint.

The rule follows the one the parity data was made with (upstream zero-initialises many layers, which would make
every output trivial): norm weights 1 + 0.1·N, norm biases 0.05·N, matrices N(0, 1/fan_in), other biases 0.05·N,
embeddings and tokens 0.5·N, LayerScale 0.5 + 0.1·N. Buffers computed by the modules (sin/cos tables, offsets)
are kept as the modules compute them.
"""
from __future__ import annotations

import torch
from torch import nn

_TOKEN_NAMES = ("pos_emb", "pos_embed", "pos_embed_window", "cls_token", "register_tokens", "mask_token", "idx_emb",
                "invalid_xyz_token")  # fmt: skip
_NORMS = (nn.LayerNorm, nn.GroupNorm)


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter of `module` in place, deterministically from `seed`.

    The numbers are drawn on the parameters' device (a CPU module gets the CPU generator's numbers, a CUDA module
    CUDA's: fast for the official sizes, but not the same values).
    """
    generators: dict[torch.device, torch.Generator] = {}
    norm_params = {id(p) for m in module.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for name, p in module.named_parameters():
            g = generators.setdefault(p.device, torch.Generator(p.device).manual_seed(seed))
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32)
            if id(p) in norm_params:
                value = 1 + 0.1 * noise if leaf == "weight" else 0.05 * noise
            elif leaf == "gamma":  # RMS norm (1 + 0.1 N) and LayerScale (0.5 + 0.1 N)
                value = (0.5 if ".ls" in f".{name}" else 1.0) + 0.1 * noise
            elif leaf in _TOKEN_NAMES:
                value = 0.5 * noise
            elif p.dim() >= 2:
                value = noise / (p[0].numel() ** 0.5)
            else:
                value = 0.05 * noise
            p.copy_(value.to(p.dtype))
    return module
