"""The condition embedder of both stages (upstream `EmbedderFuser`, checkpoint prefix
`_base_models.condition_embedder.`).

Embedders `module_list.{i}` (stage 1: Dino, Dino, PointPatchEmbed; stage 2: Dino, Dino) each consume a list of
named inputs, each tagged with a group ("cropped" -> 0, "full" -> 1). Every embedder output goes through its own
`projection_nets.{i}` = Sequential(LayerNorm(C_i, eps 1e-5), SwiGLU to C) and gets `idx_emb[group]` added. The
tokens are concatenated in embedder order x input order:

* stage 1: image, rgb_image (Dino#0), mask, rgb_image_mask (Dino#1), pointmap, rgb_pointmap (PPE)
  = 4 x 1370 + 2 x 1024 = 7528 official tokens;
* stage 2: image, rgb_image, mask, rgb_image_mask = 4 x 1374 = 5496 official tokens.

`embed` (raw embedder outputs, only for the names given) and `fuse` (projection + group embedding +
concatenation) are separate so the pipeline can reuse raw outputs across masks of one image, or take them from
a DINO backbone shared between the stages (`Dino.forward_both`).

Shapes: B batch, T tokens, C = embed_dim (the fused width), C_i embedder i's width, F SwiGLU hidden width.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .dino import Dino, DinoConfig
from .dino import PRESETS as DINO_PRESETS
from .norms import LayerNorm32
from .point_embed import PointPatchEmbed, PointPatchEmbedConfig
from .point_embed import PRESETS as POINT_PRESETS

GROUPS = ("cropped", "full")  # idx_emb rows 0 and 1; upstream allocates one more row, never used

# Per embedder, the (input name, group) pairs it consumes, in token order.
SS_INPUTS = (
    (("image", "cropped"), ("rgb_image", "full")),  # module_list.0: Dino
    (("mask", "cropped"), ("rgb_image_mask", "full")),  # module_list.1: Dino
    (("pointmap", "cropped"), ("rgb_pointmap", "full")),  # module_list.2: PointPatchEmbed
)
SLAT_INPUTS = SS_INPUTS[:2]


@dataclass(frozen=True)
class ConditionConfig:
    dino: DinoConfig = field(default_factory=DinoConfig)  # both Dino embedders (module_list.0 and .1)
    point: PointPatchEmbedConfig | None = field(default_factory=PointPatchEmbedConfig)  # module_list.2; None: stage 2
    inputs: tuple[tuple[tuple[str, str], ...], ...] = SS_INPUTS  # per embedder: (input name, group) in token order
    hidden_multiplier: float = 4.0  # SwiGLU hidden starts from int(2 * int(hidden_multiplier * C) / 3) ...
    hidden_multiple_of: int = 256  # ... rounded up to a multiple of this (official: 2816)
    norm_eps: float = 1e-5  # projection LayerNorms

    def __post_init__(self) -> None:
        n = 2 + (self.point is not None)
        if len(self.inputs) != n:
            raise ValueError(f"ConditionConfig: {n} embedders need {n} input lists, got {len(self.inputs)}")
        names = [name for pairs in self.inputs for name, _ in pairs]
        if len(set(names)) != len(names):
            raise ValueError(f"ConditionConfig: input names repeat: {names}")
        bad = [group for pairs in self.inputs for _, group in pairs if group not in GROUPS]
        if bad:
            raise ValueError(f"ConditionConfig: unknown groups {bad}; known: {GROUPS}")

    @property
    def embedder_dims(self) -> tuple[int, ...]:
        """C_i of module_list.{i}."""
        point = () if self.point is None else (self.point.embed_dim,)
        return (self.dino.embed_dim, self.dino.embed_dim) + point

    @property
    def embed_dim(self) -> int:
        """C: the widest embedder's width (upstream rule)."""
        return max(self.embedder_dims)

    @property
    def hidden_dim(self) -> int:
        """F: Llama-3 SwiGLU hidden width."""
        hidden = int(2 * int(self.hidden_multiplier * self.embed_dim) / 3)
        return -(-hidden // self.hidden_multiple_of) * self.hidden_multiple_of

    @property
    def num_tokens(self) -> int:
        """T of the fused output."""
        dino = self.dino.num_slat_tokens if self.dino.prenorm_features else self.dino.num_ss_tokens
        counts = (dino, dino) + (() if self.point is None else (self.point.num_tokens,))
        return sum(count * len(pairs) for count, pairs in zip(counts, self.inputs))


def _slat(dino: DinoConfig) -> ConditionConfig:
    """Stage-2 configuration: SLAT tokens from both Dinos, no pointmap embedder."""
    return ConditionConfig(dino=replace(dino, prenorm_features=True), point=None, inputs=SLAT_INPUTS)


PRESETS: dict[str, ConditionConfig] = {
    # Stage 1 (ss_generator.ckpt): 7528 tokens official, 140 tiny.
    "official": ConditionConfig(),
    "tiny": ConditionConfig(dino=DINO_PRESETS["tiny"], point=POINT_PRESETS["tiny"]),
    # Stage 2 (slat_generator.ckpt): 5496 tokens official, 84 tiny.
    "official_slat": _slat(DINO_PRESETS["official"]),
    "tiny_slat": _slat(DINO_PRESETS["tiny"]),
}


class ConditionEmbedder(nn.Module):
    """Upstream EmbedderFuser (eval mode: no modality dropout)."""

    def __init__(self, cfg: ConditionConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        self.idx_emb = nn.Parameter(torch.zeros(len(GROUPS) + 1, c))
        embedders: list[nn.Module] = [Dino(cfg.dino), Dino(cfg.dino)]
        if cfg.point is not None:
            embedders.append(PointPatchEmbed(cfg.point))
        self.module_list = nn.ModuleList(embedders)
        self.projection_nets = nn.ModuleList(
            nn.Sequential(LayerNorm32(dim, eps=cfg.norm_eps), SwiGLU(dim, cfg.hidden_dim, c))
            for dim in cfg.embedder_dims
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every input `forward` needs, in token order."""
        return tuple(name for pairs in self.cfg.inputs for name, _ in pairs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """All of `input_names` -> condition tokens (B, T, C)."""
        return self.fuse(self.embed(inputs))

    def embed(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw embedder outputs for exactly the names given.

        images/masks: (B, 3|1, H, W) in [0, 1]; pointmaps: (B, 3, H, W), non-finite = invalid.
        Returns name -> (B, T_i, C_i). Inputs of one embedder with equal shapes run as one batch.
        """
        unknown = sorted(set(inputs) - set(self.input_names))
        if unknown:
            raise InputError(f"condition embedder got unknown inputs {unknown}; known: {list(self.input_names)}")
        raw = {}
        for embedder, pairs in zip(self.module_list, self.cfg.inputs):
            names = [name for name, _ in pairs if name in inputs]
            raw.update(zip(names, _run_batched(embedder, [inputs[name] for name in names])))
        return raw

    def fuse(self, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw embedder outputs (all of `input_names`) -> condition tokens (B, T, C)."""
        missing = [name for name in self.input_names if name not in raw]
        if missing:
            raise InputError(f"condition embedder is missing inputs {missing}; it needs {list(self.input_names)}")
        tokens = []
        for net, pairs in zip(self.projection_nets, self.cfg.inputs):
            x = torch.cat([raw[name] for name, _ in pairs], dim=1)  # (B, T_i for all of this embedder's inputs, C_i)
            y = net(x.to(net[1].w1.weight.dtype))  # (B, ·, C)
            group = torch.cat(
                [self.idx_emb[GROUPS.index(g)].expand(raw[name].shape[1], -1) for name, g in pairs]
            )  # (·, C)
            tokens.append(y + group.to(y.dtype))
        return torch.cat(tokens, dim=1)  # (B, T, C)


class SwiGLU(nn.Module):
    """Llama-3 FeedForward without biases: w2(silu(w1 x) * w3 x)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.w1 = nn.Linear(in_dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, out_dim, bias=False)
        self.w3 = nn.Linear(in_dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def _run_batched(embedder: nn.Module, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """embedder over each of xs; one call on their batch concatenation when all shapes agree."""
    if len(xs) > 1 and all(x.shape == xs[0].shape for x in xs):
        return list(embedder(torch.cat(xs)).split(xs[0].shape[0]))  # (n·B, ...) -> n x (B, ...)
    return [embedder(x) for x in xs]
