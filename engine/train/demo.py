"""The demo model's sizes: SAM 3D Objects' stage structure at widths and depths we can train in minutes.

Everything that stays is the pipeline's: 64³ occupancy <-> 16³×8 shape latent, the MoT stage-1 flow over the
4096 shape tokens and 4 pose tokens, the 8-channel structured latent on the occupied 64³ voxels, the stage-2
flow with its 2× down-sampling I/O blocks, the swin decoders, the 4× finer FlexiCubes grid (256³), and condition
fusers with two DINO copies (image, mask) plus the pointmap embedder for stage 1. What shrinks:

| network | demo | official |
|---|---|---|
| DINO (both stages) | 224 px, patch 14, width 192, 6 blocks, 3 heads | 518 px, width 1024, 24 blocks |
| pointmap embedder | 96 px, 6-px windows (256 tokens), width 128, 4 heads | 256 px, 8-px windows, width 512 |
| stage-1 flow | width 128, 8 blocks, 4 heads | width 1024, 24 blocks |
| SS decoder | channels 64/32/16 | 512/128/32 |
| stage-2 flow | width 128, 6 blocks, I/O width 64 | width 1024, 24 blocks, I/O 128 |
| Gaussian / mesh decoders | width 128, 4 blocks; 8 Gaussians per voxel | width 768, 12 blocks; 32 |

The image size of the preprocessing equals DINO's input (224). Samplers: 12 steps per stage (the official 25 cost
44 stage-1 network evaluations, about 2 s each on two CPU cores) and stage-1 guidance 1 instead of 7: on a model
trained for 6.5 minutes, guidance 7 / 3 / 1 / 0 gave median voxel IoU 0.58 / 0.61 / 0.64 / 0.59 and mask IoU
0.51 / 0.59 / 0.65 / 0.66 (12 held-out images). Both live in demo.json; retune them after training with
`scripts/eval_demo.py --steps1/--cfg1/--steps2/--cfg2`. The two DINO copies of a condition fuser are
trained as one (tied, like the identical copies upstream) and stored once (`export.py`). Our own encoders (SS VAE
encoder, SLAT encoder) are only needed for training and are not shipped.

"micro" has the same structure at toy sizes on a 16³ grid, for CPU tests.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import PipelineConfig
from ..models.condition import SLAT_INPUTS, ConditionConfig
from ..models.dino import DinoConfig
from ..models.gs_decoder import GaussianDecoderConfig
from ..models.mesh_decoder import MeshDecoderConfig
from ..models.point_embed import PointPatchEmbedConfig
from ..models.slat_decoder import SlatDecoderConfig
from ..models.slat_flow import SlatFlowConfig
from ..models.ss_decoder import SSDecoderConfig
from ..models.ss_flow import SSFlowConfig
from ..preprocess import PreprocessConfig
from ..sampling import STAGE1, STAGE2
from . import slat_encoder, ss_encoder
from .slat_encoder import SlatEncoderConfig
from .ss_encoder import SSEncoderConfig


@dataclass(frozen=True)
class DemoModel:
    """The pipeline's networks plus our training-only encoders."""

    pipeline: PipelineConfig
    ss_encoder: SSEncoderConfig
    slat_encoder: SlatEncoderConfig

    @property
    def resolution(self) -> int:
        """Side of the occupancy grid (64 for the demo)."""
        return self.pipeline.mesh_decoder.trunk.resolution


def _condition(dino: DinoConfig, point: PointPatchEmbedConfig) -> tuple[ConditionConfig, ConditionConfig]:
    """(stage-1 fuser: Dino, Dino, PointPatchEmbed; stage-2 fuser: Dino, Dino with pre-norm tokens)."""
    return (
        ConditionConfig(dino=dino, point=point),
        ConditionConfig(dino=replace(dino, prenorm_features=True), point=None, inputs=SLAT_INPUTS),
    )


def _demo() -> DemoModel:
    dino = DinoConfig(img_size=224, patch_size=14, embed_dim=192, depth=6, num_heads=3, input_size=224)
    point = PointPatchEmbedConfig(embed_dim=128, input_size=96, patch_size=6, num_heads=4)
    ss_condition, slat_condition = _condition(dino, point)
    c = ss_condition.embed_dim  # 192
    trunk = SlatDecoderConfig(resolution=64, model_channels=128, num_blocks=4, num_heads=4)
    pipeline = PipelineConfig(
        preprocess=PreprocessConfig(size=224),
        ss_condition=ss_condition,
        ss_flow=SSFlowConfig(model_channels=128, cond_channels=c, num_blocks=8, num_heads=4, resolution=16),
        ss_decoder=SSDecoderConfig(channels=(64, 32, 16)),
        slat_condition=slat_condition,
        slat_flow=SlatFlowConfig(
            model_channels=128, cond_channels=c, num_blocks=6, num_heads=4, io_block_channels=(64,)
        ),
        gs_decoder=GaussianDecoderConfig(trunk=trunk, num_gaussians=8),
        mesh_decoder=MeshDecoderConfig(trunk=trunk, groupnorm_groups=8),
        stage1=replace(STAGE1, steps=12, cfg_strength=1.0),  # CPU: a third of the official network evaluations
        # Guidance in stage 2 (its training drops the condition for it) pushes colours away from the unconditional
        # grey; too much over-saturates them. Colour error for strength 0 / 0.75 / 1 / 1.5 / 2 / 3 on the 200 held-out
        # images: 0.130 / 0.109 / 0.110 / 0.116 / 0.122 / 0.136. It doubles the network calls of steps with t <= 0.5
        stage2=replace(STAGE2, steps=12, cfg_strength=1.0),
        refine_layout=True,  # the small model's poses gain from the fit to mask and pointmap (layout_fit.py)
    )
    return DemoModel(pipeline, ss_encoder.PRESETS["demo"], slat_encoder.PRESETS["demo"])


def _micro() -> DemoModel:
    dino = DinoConfig(img_size=28, patch_size=14, embed_dim=16, depth=1, num_heads=2, input_size=28)
    point = PointPatchEmbedConfig(embed_dim=16, input_size=16, patch_size=8, num_heads=2)
    ss_condition, slat_condition = _condition(dino, point)
    trunk = SlatDecoderConfig(resolution=16, model_channels=16, num_blocks=1, num_heads=2)
    pipeline = PipelineConfig(
        preprocess=PreprocessConfig(size=28),
        ss_condition=ss_condition,
        ss_flow=SSFlowConfig(model_channels=16, cond_channels=16, num_blocks=1, num_heads=2, resolution=4),
        ss_decoder=SSDecoderConfig(channels=(8, 8, 8), resolution=4, num_res_blocks=1, num_res_blocks_middle=1),
        slat_condition=slat_condition,
        slat_flow=SlatFlowConfig(model_channels=16, cond_channels=16, num_blocks=1, num_heads=2, io_block_channels=(8,)),
        gs_decoder=GaussianDecoderConfig(trunk=trunk, num_gaussians=4),
        mesh_decoder=MeshDecoderConfig(trunk=trunk, groupnorm_groups=2),
        stage1=replace(STAGE1, steps=3),
        stage2=replace(STAGE2, steps=3),
        mesh_resolution=64,
    )
    return DemoModel(pipeline, ss_encoder.PRESETS["micro"], slat_encoder.PRESETS["micro"])


PRESETS: dict[str, DemoModel] = {"demo": _demo(), "micro": _micro()}


def demo_config() -> PipelineConfig:
    """The demo pipeline's configuration before training (the trained folder's demo.json adds the latent
    statistics and any sampler settings chosen after training)."""
    return PRESETS["demo"].pipeline
