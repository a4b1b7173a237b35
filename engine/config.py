"""The whole pipeline's configuration: one config per network plus the pipeline's own settings.

Presets: "official" (the released checkpoints), "tiny" (the dimensions of the small official-format test folder;
random or test weights, for CPU tests). The official release's YAML files are read into this by
`engine/weights/release.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import InputError
from .models import condition, gs_decoder, mesh_decoder, slat_flow, ss_decoder, ss_flow
from .preprocess import PRESETS as PREPROCESS_PRESETS
from .preprocess import PreprocessConfig
from .sampling import STAGE1, STAGE2, SamplerSettings

# De-normalisation of the stage-2 latent (pipeline.yaml `slat_mean` / `slat_std`).
SLAT_MEAN = (0.12211431, 0.37204156, -1.26521907, -2.05276058, -3.10432536, -0.11294304, -0.85146744, 0.45506954)
SLAT_STD = (2.37326008, 2.13174402, 2.2413953, 2.30589401, 2.1191894, 1.8969511, 2.41684989, 2.08374642)

# The networks a pipeline holds, in the order a run uses them.
MODEL_NAMES = ("ss_condition", "ss_flow", "ss_decoder", "slat_condition", "slat_flow", "gs_decoder", "mesh_decoder")


@dataclass(frozen=True)
class PipelineConfig:
    preprocess: PreprocessConfig
    ss_condition: condition.ConditionConfig  # stage-1 condition fuser (DINO x2 + pointmap embedder)
    ss_flow: ss_flow.SSFlowConfig
    ss_decoder: ss_decoder.SSDecoderConfig
    slat_condition: condition.ConditionConfig  # stage-2 condition fuser (DINO x2, pre-norm tokens)
    slat_flow: slat_flow.SlatFlowConfig
    gs_decoder: gs_decoder.GaussianDecoderConfig
    mesh_decoder: mesh_decoder.MeshDecoderConfig
    stage1: SamplerSettings = STAGE1  # default-quality samplers; quality presets derive from these
    stage2: SamplerSettings = STAGE2
    slat_mean: tuple[float, ...] = SLAT_MEAN
    slat_std: tuple[float, ...] = SLAT_STD
    prune_interior: bool = True  # pipeline.yaml downsample_ss_dist = 1: keep the surface shell of the occupancy
    max_voxels: int = 42000  # voxel cap before stage 2 (above it the grid is halved)
    mesh_resolution: int = 256  # FlexiCubes grid of the mesh decoder's output (64 voxels x 4)
    refine_layout: bool = False  # fit each pose to its mask and pointmap after stage 1 (`layout_fit.py`)
    seal_mesh: bool = True  # close meshes at the grid's sides and over the pruned interior (`mesh_extraction.py`)


def preset(name: str) -> PipelineConfig:
    """A named preset: "official" or "tiny"."""
    if name not in ("official", "tiny"):
        raise InputError(f"unknown preset {name!r}; choose 'official' or 'tiny'")
    return PipelineConfig(
        preprocess=PREPROCESS_PRESETS[name],
        ss_condition=condition.PRESETS[name],
        ss_flow=ss_flow.PRESETS[name],
        ss_decoder=ss_decoder.PRESETS[name],
        slat_condition=condition.PRESETS[f"{name}_slat"],
        slat_flow=slat_flow.PRESETS[name],
        gs_decoder=gs_decoder.PRESETS[name],
        mesh_decoder=mesh_decoder.PRESETS[name],
    )


# Quality presets: sampler settings derived from a config's defaults.
QUALITIES = ("fast", "default", "high")


def samplers_for(config: PipelineConfig, quality: str) -> tuple[SamplerSettings, SamplerSettings]:
    """(stage 1, stage 2) sampler settings for a quality name.

    fast: the official fast mode with fewer steps: stage 1 in shortcut mode (4 steps, d = 1/4, no guidance),
        stage 2 with 8 steps and no guidance (the release's `use_stage2_distillation`, which only turns its
        guidance off): 4 + 8 network rows instead of 4 + 13;
    default: the official 25 + 25 steps with guidance; high: 50 + 50 steps with the same guidance.
    """
    if quality == "default":
        return config.stage1, config.stage2
    if quality == "fast":
        return replace(config.stage1, steps=4, shortcut=True), replace(config.stage2, steps=8, cfg_strength=0.0)
    if quality == "high":
        return replace(config.stage1, steps=50), replace(config.stage2, steps=50)
    raise InputError(f"unknown quality {quality!r}; choose one of {', '.join(QUALITIES)}")
