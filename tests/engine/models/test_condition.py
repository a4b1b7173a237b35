"""The condition embedder (upstream EmbedderFuser) against the official code: parity cases `embedder_fuser_ss`,
`embedder_fuser_slat`, the official checkpoint manifests and the conditioning tokens of `official_format_tiny/`."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import InputError
from engine.models.condition import PRESETS, SLAT_INPUTS, ConditionConfig, ConditionEmbedder
from engine.models.dino import DinoConfig
from engine.models.point_embed import PointPatchEmbedConfig
from tests.engine.manifests import assert_matches_manifest, build_on_meta, tiny_checkpoint
from tests.engine.parity import assert_close, load_case
from tests.paths import PARITY

TOL = dict(atol=1e-5, rtol=1e-5)
PREFIX = "_base_models.condition_embedder."
TINY_FOLDER = PARITY / "official_format_tiny"


def _config_of_case(meta: dict) -> ConditionConfig:
    c, vit = meta["config"], meta["config"]["dino"]["vit"]
    dino = DinoConfig(
        img_size=vit["img_size"],
        embed_dim=vit["embed_dim"],
        depth=vit["depth"],
        num_heads=vit["num_heads"],
        input_size=c["dino"]["input_size"],
        prenorm_features=c["dino_prenorm_features"],
    )
    if "ppe" not in c:
        return ConditionConfig(dino=dino, point=None, inputs=SLAT_INPUTS)
    ppe = c["ppe"]
    return ConditionConfig(
        dino=dino,
        point=PointPatchEmbedConfig(
            embed_dim=ppe["embed_dim"], input_size=ppe["input_size"], patch_size=ppe["patch_size"]
        ),
    )


def _case_model(name: str):
    case = load_case(name)
    model = ConditionEmbedder(_config_of_case(case.meta)).eval()
    model.load_state_dict(case.params, strict=True)
    return case, model


def _random_weights(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (seeded): matrices N(0, 1/fan_in), norm weights 1 + 0.1 N, the rest 0.5 N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2 and name.endswith("weight"):
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif name.endswith(("norm1.weight", "norm2.weight", "norm.weight", ".0.weight", "gamma")):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.5 * noise)
    return module.eval()


def _random_inputs(seed: int, names, size: int = 56) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = {}
    for name in names:
        if "mask" in name:
            inputs[name] = (torch.rand(1, 1, size, size, generator=g) > 0.5).float()
        elif "pointmap" in name:
            xyz = torch.randn(1, 3, size, size, generator=g)
            inputs[name] = xyz.masked_fill(torch.rand(1, 1, size, size, generator=g) < 0.1, float("nan"))
        else:
            inputs[name] = torch.rand(1, 3, size, size, generator=g)
    return inputs


# ---- parity ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["embedder_fuser_ss", "embedder_fuser_slat"])
@torch.no_grad()
def test_matches_official_raw_embeddings_and_fused_tokens(name):
    case, model = _case_model(name)
    raw = model.embed(case.inputs)
    assert sorted(raw) == sorted(model.input_names)
    for key, value in raw.items():
        assert_close(value, case.outputs[f"embedder_raw.{key}"], **TOL, what=f"embedder_raw.{key}")
    assert_close(model.fuse(raw), case.outputs["tokens"], **TOL, what="tokens")
    assert model.cfg.num_tokens == case.outputs["tokens"].shape[1]


@pytest.mark.parametrize(
    "stage, checkpoint, preset", [("ss", "ss_generator.ckpt", "tiny"), ("slat", "slat_generator.ckpt", "tiny_slat")]
)
@torch.no_grad()
def test_tiny_presets_load_official_format_tiny_and_reproduce_its_tokens(stage, checkpoint, preset):
    io = load_file(str(TINY_FOLDER / "io.safetensors"))
    model = ConditionEmbedder(PRESETS[preset]).eval()
    model.load_state_dict(tiny_checkpoint(checkpoint, PREFIX), strict=True)
    inputs = {name: io[f"output.preprocessed.{stage}.{name}"] for name in model.input_names}
    # Suggested tolerance for end-to-end conditioning tokens (official_format_tiny/README.md).
    assert_close(model(inputs), io[f"output.cond.{stage}_tokens"], atol=1e-4, rtol=1e-4, what=f"{stage} tokens")


# ---- official sizes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, manifest, tokens",
    [("official", "manifest_ss_generator.json", 7528), ("official_slat", "manifest_slat_generator.json", 5496)],
)
def test_official_modules_have_the_checkpoint_keys_and_shapes_and_token_counts(preset, manifest, tokens):
    model = build_on_meta(lambda: ConditionEmbedder(PRESETS[preset]))
    assert_matches_manifest(model, manifest, PREFIX)
    with torch.device("meta"):
        out = model({name: torch.empty(1, 1 if "mask" in name else 3, 518, 518) for name in model.input_names})
    assert out.shape == (1, tokens, 1024) == (1, PRESETS[preset].num_tokens, PRESETS[preset].embed_dim)
    assert PRESETS[preset].hidden_dim == 2816


# ---- API for the pipeline ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return _random_weights(ConditionEmbedder(PRESETS["tiny"]), seed=31)


@torch.no_grad()
def test_embed_computes_only_the_inputs_given_and_parts_fuse_like_forward(tiny):
    inputs = _random_inputs(32, tiny.input_names)
    full_image = {"rgb_image", "rgb_image_mask", "rgb_pointmap"}  # reusable across masks of one image
    shared = tiny.embed({k: v for k, v in inputs.items() if k in full_image})
    assert set(shared) == full_image
    per_mask = tiny.embed({k: v for k, v in inputs.items() if k not in full_image})
    tokens = tiny.fuse(shared | per_mask)
    assert tokens.shape == (1, 140, 32) and torch.isfinite(tokens).all()
    assert_close(tokens, tiny(inputs), **TOL, what="split vs forward")


@torch.no_grad()
def test_inputs_of_one_embedder_give_the_same_result_batched_or_alone(tiny):
    inputs = _random_inputs(33, ["image", "rgb_image"])
    batched = tiny.embed(inputs)
    for name, x in inputs.items():
        assert_close(batched[name], tiny.embed({name: x})[name], **TOL, what=name)
    # Different sizes cannot be batched; each is resized on its own.
    mixed = inputs | {"rgb_image": torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(34))}
    assert_close(tiny.embed(mixed)["rgb_image"], tiny.embed({"rgb_image": mixed["rgb_image"]})["rgb_image"], **TOL)


@torch.no_grad()
def test_group_embedding_is_all_that_separates_a_cropped_from_a_full_input(tiny):
    raw = tiny.embed(_random_inputs(35, tiny.input_names))
    raw["rgb_image"] = raw["image"]  # same embedder, same raw tokens; groups "cropped" (0) and "full" (1)
    tokens = tiny.fuse(raw)
    image, rgb_image = tokens[:, :17], tokens[:, 17:34]
    assert_close(rgb_image - image, (tiny.idx_emb[1] - tiny.idx_emb[0]).expand_as(image), **TOL, what="groups")


@torch.no_grad()
def test_one_shared_backbone_serves_both_stages():
    stage1 = _random_weights(ConditionEmbedder(PRESETS["tiny"]), seed=37)
    stage2 = _random_weights(ConditionEmbedder(PRESETS["tiny_slat"]), seed=38)
    for i in (0, 1):  # same DINO weights in both stages, as in the release
        stage2.module_list[i].load_state_dict(stage1.module_list[i].state_dict())
    inputs = _random_inputs(39, stage1.input_names)
    raw1 = stage1.embed({k: v for k, v in inputs.items() if "pointmap" in k})
    raw2 = {}
    for dino, pairs in zip(stage1.module_list[:2], stage1.cfg.inputs):
        for name, _ in pairs:
            raw1[name], raw2[name] = dino.forward_both(inputs[name])
    assert_close(stage1.fuse(raw1), stage1(inputs), **TOL, what="stage 1")
    assert_close(stage2.fuse(raw2), stage2({k: v for k, v in inputs.items() if "pointmap" not in k}), **TOL,
                 what="stage 2")  # fmt: skip


@torch.no_grad()
def test_half_precision_weights_run_and_stay_close_to_float32(tiny):
    inputs = _random_inputs(40, tiny.input_names)
    reference = tiny(inputs)
    half = _random_weights(ConditionEmbedder(PRESETS["tiny"]), seed=31).to(torch.bfloat16)
    tokens = half(inputs)
    assert tokens.dtype == torch.bfloat16 and torch.isfinite(tokens).all()
    assert_close(tokens, reference, atol=0.1, rtol=0.05, what="bf16")


def test_unknown_or_missing_inputs_are_named(tiny):
    inputs = _random_inputs(41, tiny.input_names)
    with pytest.raises(InputError, match="depth"):
        tiny.embed(inputs | {"depth": inputs["image"]})
    with pytest.raises(InputError, match="rgb_pointmap"):
        tiny.fuse(tiny.embed({k: v for k, v in inputs.items() if k != "rgb_pointmap"}))


def test_stage_presets_differ_only_where_the_stages_do():
    ss, slat = PRESETS["official"], PRESETS["official_slat"]
    assert slat.point is None and slat.inputs == ss.inputs[:2]
    assert slat.dino == replace(ss.dino, prenorm_features=True) and not ss.dino.prenorm_features
    assert PRESETS["tiny_slat"].dino == replace(PRESETS["tiny"].dino, prenorm_features=True)
    with pytest.raises(ValueError, match="input lists"):
        ConditionConfig(point=None)
