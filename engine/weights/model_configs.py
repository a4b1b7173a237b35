"""From the release's YAML sections to our model configs (and the whole `PipelineConfig`).

Every number a config needs comes from the YAML of the release that is loaded, except two things the upstream
code takes from elsewhere (`OutsideYaml`): the DINOv2 dimensions (the YAMLs only name the torch.hub model,
`dinov2_vitl14_reg`) and the mesh decoder's GroupNorm group count (a code default, 32). For the real release
the defaults here are right; for ../shared/parity/official_format_tiny use `OutsideYaml.from_json(not_in_yaml.json)`.

YAML values that select behaviour our models implement in one way only (`pe_mode: ape`, `attn_mode: swin`,
`remap_output: linear`, …) are checked, so a release that needs something else fails with a clear error instead
of computing something different.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from .release import Release

# torch.hub DINOv2 models by name -> backbone dimensions (what `dinov2_vitl14_reg` builds).
DINO_MODELS: dict[str, dict[str, Any]] = {
    "dinov2_vitl14_reg": dict(img_size=518, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                              num_register_tokens=4, mlp_ratio=4.0, norm_eps=1e-6),
}


@dataclass(frozen=True)
class DinoDims:
    img_size: int  # px; pos_embed covers (img_size / 14)² patches
    embed_dim: int
    depth: int
    num_heads: int


@dataclass(frozen=True)
class OutsideYaml:
    """What the official code takes from outside the YAMLs. Defaults: the real release."""

    dino: DinoDims | None = None  # None: from the YAML's `dino_model` name (DINO_MODELS)
    mesh_groupnorm_groups: int = 32  # GroupNorm groups of the mesh decoder's subdivide blocks

    @classmethod
    def from_json(cls, path: str | Path, which: str = "this_folder") -> OutsideYaml:
        """Read a `not_in_yaml.json` (the format of official_format_tiny): `which` = "this_folder" or "real_release"."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            dino = data["dino"][which]
            return cls(dino=DinoDims(img_size=int(dino["img_size"]), embed_dim=int(dino["embed_dim"]),
                                     depth=int(dino["depth"]), num_heads=int(dino["num_heads"])),
                       mesh_groupnorm_groups=int(data["mesh_decoder"]["subdivide_groupnorm_groups"][which]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{path}: is not a readable not_in_yaml.json ({type(e).__name__}: {e})",
                               "pass the file from the weights folder, or leave it out for the real release") from None


def model_config(release: Release, model: str, outside: OutsideYaml = OutsideYaml()) -> Any:
    """The config of one of our models (`release.models`) from its YAML section."""
    builders = {
        "ss_flow": lambda s: ss_flow_config(s),
        "ss_condition": lambda s: condition_config(s, outside),
        "slat_flow": lambda s: slat_flow_config(s),
        "slat_condition": lambda s: condition_config(s, outside),
        "ss_decoder": lambda s: ss_decoder_config(s),
        "gs_decoder": lambda s: gs_decoder_config(s),
        "gs_decoder_4": lambda s: gs_decoder_config(s),
        "mesh_decoder": lambda s: mesh_decoder_config(s, outside),
    }
    yaml_name = release.yaml_path(model)
    try:
        return builders[model](_Section(release.section(model), str(yaml_name)))
    except (ValueError, TypeError) as e:  # a config's own validation, or a value of the wrong type
        raise WeightsError(f"{yaml_name}: cannot configure {model} ({e})", "the YAML is not the official one") from None


def pipeline_config(release: Release, outside: OutsideYaml = OutsideYaml()) -> Any:
    """The whole `engine.config.PipelineConfig` of a release opened with (at least) `DEFAULT_MODELS`."""
    from ..config import PipelineConfig
    from ..preprocess import PreprocessConfig
    from ..sampling import SamplerSettings

    settings = release.settings
    ss_sampler = _Section(release.yamls["ss_generator"], str(release.yaml_path("ss_flow"))).get(
        "module", "generator", "backbone")
    slat_sampler = _Section(release.yamls["slat_generator"], str(release.yaml_path("slat_flow"))).get(
        "module", "generator", "backbone")
    for sampler in (ss_sampler, slat_sampler):
        sampler.expect("sigma_min", 0.0)
        sampler.get("reverse_fn").expect("unconditional_handling", "add_flag")
    ss_sampler.expect("cfg_modalities", ["shape"])
    if settings.ss_cfg_strength_pm != 0.0:
        raise WeightsError(f"{release.where}: ss_cfg_strength_pm is {settings.ss_cfg_strength_pm}; this engine "
                           "guides the shape only (strength 0 on the pose)", "use the official pipeline settings")
    stage1 = SamplerSettings(steps=settings.ss_inference_steps, rescale_t=settings.ss_rescale_t,
                             cfg_strength=settings.ss_cfg_strength, cfg_interval=settings.ss_cfg_interval,
                             takes_d=True, time_scale=float(ss_sampler.get_value("time_scale")))
    stage2 = SamplerSettings(steps=settings.slat_inference_steps, rescale_t=settings.slat_rescale_t,
                             cfg_strength=settings.slat_cfg_strength, cfg_interval=settings.slat_cfg_interval,
                             time_scale=float(slat_sampler.get_value("time_scale")))
    configs = {name: model_config(release, name, outside) for name in
               ("ss_condition", "ss_flow", "ss_decoder", "slat_condition", "slat_flow", "gs_decoder", "mesh_decoder")}
    return PipelineConfig(
        preprocess=PreprocessConfig(size=settings.image_size, box_size_factor=_box_size_factor(release)),
        stage1=stage1, stage2=stage2, slat_mean=settings.slat_mean, slat_std=settings.slat_std,
        prune_interior=settings.downsample_ss_dist > 0, **configs)


# ---------------------------------------------------------------------------------------------------------------
# one config per model


def ss_flow_config(s: _Section) -> Any:
    from ..models.ss_flow import POSE, POSE_MODALITIES, SHAPE, SSFlowConfig

    s.expect("pe_mode", "ape")
    s.expect("patch_size", 1)
    s.expect("is_shortcut_model", True)
    s.expect("qk_rms_norm", True)
    s.expect("latent_share_transformer", {POSE: list(POSE_MODALITIES)})
    latents = s.get("latent_mapping")
    if set(latents.data) != {SHAPE, *POSE_MODALITIES}:
        raise WeightsError(f"{s.where}: latent_mapping has {sorted(latents.data)}, expected {SHAPE} and the pose "
                           f"modalities {', '.join(POSE_MODALITIES)}", "the YAML is not the official one")
    model_channels = s.get_value("model_channels")
    for name in latents.data:
        latents.get(name).expect("model_channels", model_channels)
    shape = latents.get(SHAPE)
    shape.get("pos_embedder").expect("resolution", s.get_value("resolution"))
    return SSFlowConfig(
        model_channels=model_channels,
        cond_channels=s.get_value("cond_channels"),
        num_blocks=s.get_value("num_blocks"),
        num_heads=s.get_value("num_heads"),
        mlp_ratio=float(s.get_value("mlp_ratio")),
        resolution=s.get_value("resolution"),
        shape_channels=shape.get_value("in_channels"),
        pose_channels=tuple(latents.get(m).get_value("in_channels") for m in POSE_MODALITIES),
    )


def condition_config(s: _Section, outside: OutsideYaml) -> Any:
    from ..models.condition import ConditionConfig
    from ..models.dino import DinoConfig
    from ..models.point_embed import PointPatchEmbedConfig

    s.expect("use_pos_embedding", "learned")
    if s.data.get("force_drop_modalities") is not None:
        raise WeightsError(f"{s.where}: force_drop_modalities is set; this engine always uses every input",
                           "the YAML is not the official one")
    entries = s.get_value("embedder_list")
    if not isinstance(entries, list) or len(entries) not in (2, 3):
        raise WeightsError(f"{s.where}: embedder_list has {len(entries) if isinstance(entries, list) else 'no'} "
                           "entries, expected Dino, Dino[, PointPatchEmbed]", "the YAML is not the official one")
    kinds = [str(e[0].get("_target_", "")).rsplit(".", 1)[-1] if isinstance(e, list) and e and isinstance(e[0], dict)
             else "?" for e in entries]
    if kinds[:2] != ["Dino", "Dino"] or kinds[2:] not in ([], ["PointPatchEmbed"]):
        raise WeightsError(f"{s.where}: embedder_list is {kinds}, expected Dino, Dino[, PointPatchEmbed]",
                           "the YAML is not the official one")
    dinos = [_Section(e[0], s.where) for e in entries[:2]]
    for key in ("dino_model", "input_size", "prenorm_features"):
        if dinos[0].data.get(key) != dinos[1].data.get(key):
            raise WeightsError(f"{s.where}: the two Dino embedders differ in {key}", "the YAML is not the official one")
    dinos[0].expect("normalize_images", True)
    name = dinos[0].get_value("dino_model")
    if name not in DINO_MODELS:
        raise WeightsError(f"{s.where}: unknown DINO model {name!r}", f"known: {', '.join(DINO_MODELS)}")
    dims = dict(DINO_MODELS[name])
    if outside.dino is not None:
        dims.update(img_size=outside.dino.img_size, embed_dim=outside.dino.embed_dim, depth=outside.dino.depth,
                    num_heads=outside.dino.num_heads)
    dino = DinoConfig(**dims, input_size=dinos[0].get_value("input_size"),
                      prenorm_features=bool(dinos[0].data.get("prenorm_features", False)))
    point = None
    if len(entries) == 3:
        ppe = _Section(entries[2][0], s.where)
        ppe.expect("remap_output", "linear")
        point = PointPatchEmbedConfig(embed_dim=ppe.get_value("embed_dim"), input_size=ppe.get_value("input_size"),
                                      patch_size=ppe.get_value("patch_size"))
    inputs = tuple(tuple((str(pair[0]), str(pair[1])) for pair in entry[1]) for entry in entries)
    return ConditionConfig(dino=dino, point=point, inputs=inputs,
                           hidden_multiplier=float(s.get_value("projection_net_hidden_dim_multiplier")))


def slat_flow_config(s: _Section) -> Any:
    from ..models.slat_flow import SlatFlowConfig

    s.expect("pe_mode", "ape")
    config = SlatFlowConfig(
        in_channels=s.get_value("in_channels"),
        out_channels=s.get_value("out_channels"),
        model_channels=s.get_value("model_channels"),
        cond_channels=s.get_value("cond_channels"),
        num_blocks=s.get_value("num_blocks"),
        num_heads=s.get_value("num_heads"),
        mlp_ratio=float(s.get_value("mlp_ratio")),
        io_block_channels=tuple(s.get_value("io_block_channels")),
        num_io_res_blocks=s.get_value("num_io_res_blocks"),
        qk_rms_norm=bool(s.get_value("qk_rms_norm")),
        resolution=s.get_value("resolution"),
    )
    s.expect("patch_size", config.patch_size)
    return config


def ss_decoder_config(s: _Section) -> Any:
    from ..models.ss_decoder import SSDecoderConfig

    s.expect("reshape_input_to_cube", False)
    return SSDecoderConfig(latent_channels=s.get_value("latent_channels"), out_channels=s.get_value("out_channels"),
                           channels=tuple(s.get_value("channels")), num_res_blocks=s.get_value("num_res_blocks"),
                           num_res_blocks_middle=s.get_value("num_res_blocks_middle"))


def gs_decoder_config(s: _Section) -> Any:
    from ..models.gs_decoder import GaussianDecoderConfig

    rep = s.get("representation_config")
    rep.expect("scaling_activation", "softplus")
    lr = rep.get("lr")
    return GaussianDecoderConfig(
        trunk=_trunk(s), num_gaussians=rep.get_value("num_gaussians"), voxel_size=float(rep.get_value("voxel_size")),
        perturb_offset=bool(rep.get_value("perturb_offset")),
        lr_xyz=float(lr.get_value("_xyz")), lr_features_dc=float(lr.get_value("_features_dc")),
        lr_scaling=float(lr.get_value("_scaling")), lr_rotation=float(lr.get_value("_rotation")),
        lr_opacity=float(lr.get_value("_opacity")), filter_3d=float(rep.get_value("3d_filter_kernel_size")),
        scaling_bias=float(rep.get_value("scaling_bias")), opacity_bias=float(rep.get_value("opacity_bias")),
    )


def mesh_decoder_config(s: _Section, outside: OutsideYaml) -> Any:
    from ..models.mesh_decoder import MeshDecoderConfig

    use_color = bool(s.get("representation_config").get_value("use_color"))
    return MeshDecoderConfig(trunk=_trunk(s), groupnorm_groups=outside.mesh_groupnorm_groups,
                             out_channels=101 if use_color else 53)  # colour adds 8 corners x 6 channels


# ---------------------------------------------------------------------------------------------------------------
# helpers


@dataclass
class _Section:
    """A YAML mapping with the file it came from, for one-line errors."""

    data: Mapping[str, Any]
    where: str
    path: tuple[str, ...] = field(default=())

    def get(self, *keys: str) -> _Section:
        node, path = self, self.path
        for key in keys:
            value = node.get_value(key)
            path = (*path, key)
            if not isinstance(value, Mapping):
                raise WeightsError(f"{self.where}: {'.'.join(path)} is not a mapping",
                                   "the YAML is not the official one")
            node = _Section(value, self.where, path)
        return node

    def get_value(self, key: str) -> Any:
        if not isinstance(self.data, Mapping) or key not in self.data:
            raise WeightsError(f"{self.where}: lacks {'.'.join((*self.path, key))}", "the YAML is not the official one")
        return self.data[key]

    def expect(self, key: str, value: Any) -> None:
        """The YAML must hold `value` here (or leave it out), as our models implement only that."""
        if key in self.data and self.data[key] != value:
            raise WeightsError(f"{self.where}: {'.'.join((*self.path, key))} is {self.data[key]!r}; this engine "
                               f"implements {value!r} only", "use the official release")


def _trunk(s: _Section) -> Any:
    from ..models.slat_decoder import SlatDecoderConfig

    s.expect("attn_mode", "swin")
    return SlatDecoderConfig(resolution=s.get_value("resolution"), latent_channels=s.get_value("latent_channels"),
                             model_channels=s.get_value("model_channels"), num_blocks=s.get_value("num_blocks"),
                             num_heads=s.get_value("num_heads"), mlp_ratio=float(s.get_value("mlp_ratio")),
                             window_size=s.get_value("window_size"))


def _box_size_factor(release: Release) -> float:
    """The crop factor of the preprocessors' crop_around_mask_with_padding (both must agree)."""
    found: set[float] = set()

    def visit(node: Any) -> None:
        if isinstance(node, Mapping):
            if str(node.get("_target_", "")).endswith(".crop_around_mask_with_padding"):
                found.add(float(node.get("box_size_factor", 1.0)))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit({k: release.pipeline.get(k) for k in ("ss_preprocessor", "slat_preprocessor")})
    if len(found) != 1:
        raise WeightsError(f"{release.where}: pipeline.yaml's crop box factors are {sorted(found) or 'missing'}",
                           "use the official pipeline.yaml")
    return found.pop()
