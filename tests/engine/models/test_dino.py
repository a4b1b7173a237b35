"""DINOv2 ViT-L/14-reg and the Dino wrapper against the official code (parity case `dino_vit_tiny`)."""
from __future__ import annotations

import json

import pytest
import torch

from engine.errors import InputError
from engine.models.dino import PRESETS, Dino, DinoConfig
from tests.engine.manifests import assert_matches_manifest, build_on_meta
from tests.engine.parity import assert_close, load_case
from tests.paths import PARITY

TOL = dict(atol=1e-5, rtol=1e-5)
PREFIX = "_base_models.condition_embedder.module_list.0."


@pytest.fixture(scope="module")
def case():
    return load_case("dino_vit_tiny")


def _config(case, prenorm_features: bool = False) -> DinoConfig:
    cfg, vit = case.meta["config"], case.meta["config"]["vit"]
    return DinoConfig(
        img_size=vit["img_size"],
        patch_size=vit["patch_size"],
        embed_dim=vit["embed_dim"],
        depth=vit["depth"],
        num_heads=vit["num_heads"],
        num_register_tokens=vit["num_register_tokens"],
        mlp_ratio=vit["mlp_ratio"],
        norm_eps=vit["norm_eps"],
        input_size=cfg["input_size"],
        prenorm_features=prenorm_features,
    )


def _model(case, prenorm_features: bool = False) -> Dino:
    model = Dino(_config(case, prenorm_features)).eval()
    model.load_state_dict(case.params, strict=True)
    return model


@torch.no_grad()
def test_matches_official_ss_tokens_for_image_mask_and_resized_image(case):
    model = _model(case, prenorm_features=False)
    for name in ("image", "mask", "image64"):
        assert_close(model(case.inputs[name]), case.outputs[f"tokens.{name}"], **TOL, what=f"tokens.{name}")


@torch.no_grad()
def test_matches_official_slat_tokens_for_image_and_mask(case):
    model = _model(case, prenorm_features=True)
    for name in ("image", "mask"):
        assert_close(model(case.inputs[name]), case.outputs[f"prenorm_tokens.{name}"], **TOL, what=name)


@torch.no_grad()
def test_matches_official_intermediates(case):
    model = _model(case)
    r = model.cfg.num_register_tokens
    pre = model.preprocess(case.inputs["image"])
    assert_close(pre, case.outputs["preprocessed.image"], **TOL, what="preprocessed.image")
    x = model.backbone(pre)
    assert_close(x, case.outputs["x_prenorm.image"], **TOL, what="x_prenorm.image")
    x_norm = model.backbone.norm(x)
    assert_close(x_norm[:, 0], case.outputs["x_norm_clstoken.image"], **TOL, what="x_norm_clstoken")
    assert_close(x_norm[:, 1 : 1 + r], case.outputs["x_norm_regtokens.image"], **TOL, what="x_norm_regtokens")
    assert_close(x_norm[:, 1 + r :], case.outputs["x_norm_patchtokens.image"], **TOL, what="x_norm_patchtokens")


@torch.no_grad()
def test_forward_both_equals_the_two_single_output_configurations(case):
    g = torch.Generator().manual_seed(11)
    images = torch.rand(2, 3, 70, 61, generator=g)  # resized to 56 by the wrapper
    ss, slat = _model(case).forward_both(images)
    assert ss.shape == (2, 17, 64) and slat.shape == (2, 21, 64)
    assert_close(ss, _model(case, prenorm_features=False)(images), atol=0, rtol=0, what="ss")
    assert_close(slat, _model(case, prenorm_features=True)(images), atol=0, rtol=0, what="slat")


@torch.no_grad()
def test_one_channel_input_equals_its_three_channel_repeat(case):
    g = torch.Generator().manual_seed(12)
    mask = (torch.rand(1, 1, 56, 56, generator=g) > 0.5).float()
    model = _model(case)
    assert_close(model(mask), model(mask.repeat(1, 3, 1, 1)), atol=0, rtol=0, what="mask")


@torch.no_grad()
def test_half_precision_weights_run_and_stay_close_to_float32(case):
    g = torch.Generator().manual_seed(13)
    images = torch.rand(1, 3, 56, 56, generator=g)
    reference = _model(case).forward_both(images)
    model = _model(case).to(torch.bfloat16)
    for got, want in zip(model.forward_both(images), reference):
        assert got.dtype == torch.bfloat16
        assert_close(got, want, atol=0.1, rtol=0.05, what="bf16")


def test_rejects_images_with_two_channels(case):
    with pytest.raises(InputError, match="1 or 3"):
        _model(case)(torch.rand(1, 2, 56, 56))


@pytest.fixture(scope="module")
def official():
    return build_on_meta(lambda: Dino(PRESETS["official"]))


def test_official_backbone_has_the_checkpoint_keys_and_shapes(official):
    assert_matches_manifest(official, "manifest_ss_generator.json", PREFIX)


def test_official_token_counts(official):
    with torch.device("meta"):
        ss, slat = official.forward_both(torch.empty(1, 3, 518, 518))
    assert ss.shape == (1, 1370, 1024) and slat.shape == (1, 1374, 1024)


def test_tiny_preset_has_the_dims_of_official_format_tiny():
    dims = json.loads((PARITY / "official_format_tiny" / "not_in_yaml.json").read_text())["dino"]["this_folder"]
    tiny = PRESETS["tiny"]
    assert (tiny.img_size, tiny.embed_dim, tiny.depth, tiny.num_heads) == (
        dims["img_size"], dims["embed_dim"], dims["depth"], dims["num_heads"]
    )
    assert tiny.input_size == dims["img_size"]
