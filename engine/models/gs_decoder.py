"""SLAT Gaussian decoder: structured latent -> G 3D Gaussians per voxel (G = 32, or 4 for `slat_decoder_gs_4`).

Official checkpoints: `slat_decoder_gs.ckpt` / `slat_decoder_gs_4.ckpt`, raw state dicts without prefix:
the trunk keys of `slat_decoder.py`, `out_layer` (14·G, C) and the persistent buffer `offset_perturbation`
(G, 3) (atanh of a scaled Hammersley set; computed here the way upstream does, and also loaded from the file).

Shapes: N voxels, G Gaussians per voxel, C model channels, R grid resolution.

    h = trunk(x)                                  (N, C)
    raw = out_layer(layer_norm(h))                (N, 14·G), channel blocks in this order:
        _xyz (G·3) | _features_dc (G·1·3) | _scaling (G·3) | _rotation (G·4) | _opacity (G·1)
Per Gaussian (voxel-major: voxel n emits Gaussians n·G … n·G + G − 1), in the grid frame [0, 1]^3:
    _xyz = (coords + 0.5) / R + tanh(lr·raw_xyz + offset_perturbation) / R · 0.5 · voxel_size
    other attributes = lr · raw  (lr 1, except _rotation 0.1)
Activated (object frame, z-up, in [-0.5, 0.5]^3): xyz = _xyz − 0.5, colour = 0.28209479·f_dc + 0.5,
scaling = sqrt(softplus(_scaling + softplus⁻¹(scaling_bias))² + filter_3d²), rotation = normalize(_rotation
+ [1,0,0,0]) (w, x, y, z), opacity = sigmoid(_opacity + logit(opacity_bias)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..assets import Gaussians
from ..sparse.tensor import SparseTensor
from .norms import layer_norm32
from .slat_decoder import PRESETS as TRUNK_PRESETS
from .slat_decoder import SlatDecoderConfig, SlatDecoderTrunk

SH_C0 = 0.28209479177387814  # degree-0 spherical-harmonic constant: rgb = SH_C0 * f_dc + 0.5
GAUSSIAN_LAYOUT = (("xyz", 3), ("features_dc", 3), ("scaling", 3), ("rotation", 4), ("opacity", 1))  # per Gaussian
PLY_FIELDS = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")  # Inria 3DGS .ply columns


@dataclass(frozen=True)
class GaussianDecoderConfig:
    trunk: SlatDecoderConfig = field(default_factory=SlatDecoderConfig)  # shared swin trunk
    num_gaussians: int = 32  # G per voxel (4 for slat_decoder_gs_4)
    voxel_size: float = 1.5  # offsets reach tanh(·)·0.5·voxel_size voxels from the voxel centre
    perturb_offset: bool = True  # add the fixed Hammersley `offset_perturbation` before tanh
    lr_xyz: float = 1.0  # per-attribute multipliers applied to the raw channels
    lr_features_dc: float = 1.0
    lr_scaling: float = 1.0
    lr_rotation: float = 0.1
    lr_opacity: float = 1.0
    filter_3d: float = 0.0009  # 3d_filter_kernel_size: minimum scale, added in quadrature
    scaling_bias: float = 0.004  # activated scale of a zero raw value (softplus activation)
    opacity_bias: float = 0.1  # activated opacity of a zero raw value

    @property
    def out_channels(self) -> int:
        return self.num_gaussians * sum(width for _, width in GAUSSIAN_LAYOUT)


PRESETS: dict[str, GaussianDecoderConfig] = {
    "official": GaussianDecoderConfig(),
    "official_4": GaussianDecoderConfig(num_gaussians=4),
    "tiny": GaussianDecoderConfig(trunk=TRUNK_PRESETS["tiny"]),
    "tiny_4": GaussianDecoderConfig(trunk=TRUNK_PRESETS["tiny"], num_gaussians=4),
}


class GaussianDecoder(SlatDecoderTrunk):
    def __init__(self, cfg: GaussianDecoderConfig):
        super().__init__(cfg.trunk)
        self.cfg = cfg
        self.out_layer = nn.Linear(cfg.trunk.model_channels, cfg.out_channels)
        if cfg.perturb_offset:
            self.register_buffer("offset_perturbation", hammersley_offsets(cfg.num_gaussians, cfg.voxel_size))

    def reset_buffers(self) -> None:
        """Recompute `offset_perturbation` (e.g. after `to_empty`); loading a checkpoint overwrites it anyway."""
        if self.cfg.perturb_offset:
            buf = self.offset_perturbation
            buf.copy_(hammersley_offsets(self.cfg.num_gaussians, self.cfg.voxel_size).to(buf.device, buf.dtype))

    def forward(self, x: SparseTensor) -> SparseTensor:
        """x: latent feats (N, latent_channels) -> raw (N, 14·G) on the same voxels, in x's dtype."""
        h = self.trunk(x)
        normed = layer_norm32(h.feats, eps=1e-5).to(self.out_layer.weight.dtype)  # F.layer_norm's default eps
        return h.replace(self.out_layer(normed).to(x.dtype))

    def raw_gaussians(self, raw: SparseTensor) -> RawGaussians:
        """Split the raw channels into per-Gaussian tensors (see module docstring), float32."""
        cfg, g = self.cfg, self.cfg.num_gaussians
        n = raw.num_voxels
        parts = dict(zip(
            [name for name, _ in GAUSSIAN_LAYOUT],
            raw.feats.float().split([g * width for _, width in GAUSSIAN_LAYOUT], dim=1),
        ))
        offset = parts["xyz"].view(n, g, 3) * cfg.lr_xyz  # (N, G, 3)
        if cfg.perturb_offset:
            offset = offset + self.offset_perturbation.float()
        offset = torch.tanh(offset) / cfg.trunk.resolution * 0.5 * cfg.voxel_size
        centres = (raw.coords[:, 1:].float() + 0.5) / cfg.trunk.resolution  # (N, 3)
        return RawGaussians(
            xyz=(centres[:, None] + offset).reshape(n * g, 3),
            features_dc=(parts["features_dc"] * cfg.lr_features_dc).reshape(n * g, 1, 3),
            scaling=(parts["scaling"] * cfg.lr_scaling).reshape(n * g, 3),
            rotation=(parts["rotation"] * cfg.lr_rotation).reshape(n * g, 4),
            opacity=(parts["opacity"] * cfg.lr_opacity).reshape(n * g, 1),
            batch=raw.batch_index.repeat_interleave(g),
            filter_3d=cfg.filter_3d,
            scaling_bias=cfg.scaling_bias,
            opacity_bias=cfg.opacity_bias,
        )

    def decode(self, x: SparseTensor) -> RawGaussians:
        """forward + raw_gaussians."""
        return self.raw_gaussians(self(x))


@dataclass
class RawGaussians:
    """Per-Gaussian tensors before activation (upstream's `_xyz`, `_features_dc`, … of one batch), float32."""

    xyz: torch.Tensor  # (P, 3) centres in the grid frame [0, 1]^3
    features_dc: torch.Tensor  # (P, 1, 3) SH degree-0 coefficients
    scaling: torch.Tensor  # (P, 3) pre-activation scales
    rotation: torch.Tensor  # (P, 4) pre-bias quaternion (w, x, y, z)
    opacity: torch.Tensor  # (P, 1) pre-activation opacity
    batch: torch.Tensor  # (P,) int64 batch item of every Gaussian
    filter_3d: float
    scaling_bias: float
    opacity_bias: float

    def activated(self) -> dict[str, torch.Tensor]:
        """xyz (P,3), color_rgb (P,3), scaling (P,3), rotation (P,4) normalised, opacity (P,1)."""
        return {
            "xyz": self.xyz - 0.5,
            "color_rgb": SH_C0 * self.features_dc.flatten(1) + 0.5,
            "scaling": self.activated_scaling(),
            "rotation": F.normalize(self.biased_rotation(), dim=-1),
            "opacity": self.activated_opacity(),
        }

    def activated_scaling(self) -> torch.Tensor:
        bias = _inverse_softplus(self.scaling_bias, self.scaling.device)
        return torch.sqrt(F.softplus(self.scaling + bias).square() + self.filter_3d**2)

    def activated_opacity(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity + _logit(self.opacity_bias, self.opacity.device))

    def biased_rotation(self) -> torch.Tensor:
        """_rotation + [1, 0, 0, 0] (what the .ply stores; normalise to use)."""
        return self.rotation + torch.tensor([1.0, 0.0, 0.0, 0.0], device=self.rotation.device)

    def ply_fields(self) -> torch.Tensor:
        """(P, 17) the columns of an Inria 3DGS .ply, in `PLY_FIELDS` order."""
        opacity = self.activated_opacity()
        return torch.cat([
            self.xyz - 0.5,
            torch.zeros_like(self.xyz),  # normals
            self.features_dc.transpose(1, 2).flatten(1),  # (P, 3)
            torch.log(opacity / (1 - opacity)),  # logit of the activated opacity
            torch.log(self.activated_scaling()),
            self.biased_rotation(),
        ], dim=1)

    def to_assets(self) -> list[Gaussians]:
        """One `engine.assets.Gaussians` (numpy, object frame) per batch item."""
        act = self.activated()
        rotation = self.biased_rotation()
        size = int(self.batch.max()) + 1 if self.batch.numel() else 0
        out = []
        for b in range(size):
            sel = self.batch == b

            def arr(t: torch.Tensor) -> np.ndarray:
                return t[sel].detach().to(torch.float32).cpu().numpy()

            out.append(Gaussians(xyz=arr(act["xyz"]), colors=arr(act["color_rgb"]), scaling=arr(act["scaling"]),
                                 rotation=arr(rotation), opacity=arr(act["opacity"][:, 0])))
        return out


def hammersley_offsets(num: int, voxel_size: float) -> torch.Tensor:
    """(num, 3) float32: atanh((2·p − 1) / voxel_size) for the Hammersley points p_i = (i/num, φ2(i), φ3(i)).

    φb is the radical inverse in base b. Computed like upstream: the points in float64, rounded to float32,
    then the affine map and atanh in float32. Plain tensor ops (works on the meta device)."""
    index = torch.arange(num, dtype=torch.int64)
    columns = [index.to(torch.float64) / num]
    for base in (2, 3):
        columns.append(_radical_inverse(index, base, num))
    points = torch.stack(columns, dim=1).to(torch.float32)  # (num, 3)
    return torch.atanh((points * 2 - 1) / voxel_size)


def _radical_inverse(index: torch.Tensor, base: int, num: int) -> torch.Tensor:
    """Digits of `index` in `base` mirrored behind the radix point, accumulated in float64 digit by digit."""
    digits = max(1, math.ceil(math.log(max(num, 2), base)) + 1)
    value = torch.zeros(index.shape, dtype=torch.float64)
    rest = index
    weight = 1.0 / base
    for _ in range(digits):
        value = value + (rest % base).to(torch.float64) * weight
        rest = rest // base
        weight *= 1.0 / base
    return value


def _inverse_softplus(y: float, device: torch.device) -> torch.Tensor:
    y_t = torch.tensor(y, dtype=torch.float32, device=device)
    return torch.log(torch.exp(y_t) - 1)


def _logit(p: float, device: torch.device) -> torch.Tensor:
    p_t = torch.tensor(p, dtype=torch.float32, device=device)
    return torch.log(p_t / (1 - p_t))
