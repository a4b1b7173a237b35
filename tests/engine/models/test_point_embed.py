"""PointPatchEmbed against the official code (parity case `point_patch_embed`)."""
from __future__ import annotations

import pytest
import torch

from engine.errors import InputError
from engine.models.point_embed import PRESETS, PointPatchEmbed, PointPatchEmbedConfig
from tests.engine.manifests import assert_matches_manifest, build_on_meta
from tests.engine.parity import assert_close, load_case

TOL = dict(atol=1e-5, rtol=1e-5)
PREFIX = "_base_models.condition_embedder.module_list.2."


@pytest.fixture(scope="module")
def case():
    return load_case("point_patch_embed")


@pytest.fixture(scope="module")
def model(case):
    cfg = case.meta["config"]
    model = PointPatchEmbed(
        PointPatchEmbedConfig(
            embed_dim=cfg["embed_dim"],
            input_size=cfg["input_size"],
            patch_size=cfg["patch_size"],
            num_heads=cfg["num_heads"],
            mlp_ratio=cfg["mlp_ratio"],
            norm_eps=cfg["ln_eps"],
        )
    ).eval()
    model.load_state_dict(case.params, strict=True)
    return model


def _pointmap(seed: int, size: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=g) + torch.tensor([0.0, 0.0, 3.0]).view(1, 3, 1, 1)


@torch.no_grad()
def test_matches_official_tokens_for_a_pointmap_with_nan_and_inf(case, model):
    xyz = case.inputs["xyz"]
    assert torch.isnan(xyz).any() and torch.isinf(xyz).any()
    assert_close(model(xyz), case.outputs["tokens"], **TOL, what="tokens")


@torch.no_grad()
def test_matches_official_intermediates(case, model):
    points, valid = model.resize(case.inputs["xyz"])
    assert_close(points, case.outputs["resized_xyz"], atol=0, rtol=0, what="resized_xyz")
    assert_close(valid.float(), case.outputs["valid_mask"], atol=0, rtol=0, what="valid_mask")
    assert_close(model.embed_points(points, valid), case.outputs["point_embeddings"], **TOL, what="point_embeddings")


@torch.no_grad()
def test_nan_and_both_infinities_are_the_same_invalid_pixel(model):
    xyz = _pointmap(21)
    g = torch.Generator().manual_seed(22)
    holes = torch.rand(1, 1, 40, 40, generator=g) < 0.2
    outputs = [model(torch.where(holes, value, xyz)) for value in (float("nan"), float("inf"), float("-inf"))]
    assert torch.isfinite(outputs[0]).all()
    assert_close(outputs[1], outputs[0], atol=0, rtol=0, what="+inf vs nan")
    assert_close(outputs[2], outputs[0], atol=0, rtol=0, what="-inf vs nan")
    # A single non-finite coordinate makes the whole pixel invalid.
    one_coord = xyz.clone()
    one_coord[:, 1:2][holes] = float("nan")
    assert_close(model(one_coord), outputs[0], atol=0, rtol=0, what="one NaN coordinate")


@torch.no_grad()
def test_a_change_inside_one_window_changes_only_that_windows_token(model):
    # 32 px input (no resize), windows of 8 -> 4 x 4 tokens in row-major (y, x) order.
    xyz = _pointmap(23, size=32)
    changed = xyz.clone()
    changed[:, :, 2 * 8 + 5, 1 * 8 + 3] += 1.0  # window (y=2, x=1) -> token 9
    diff = (model(changed) - model(xyz)).abs().amax(dim=-1)[0]  # (16,)
    assert diff[9] > 1e-3
    assert torch.all(diff[torch.arange(16) != 9] < 1e-6)


def test_rejects_a_pointmap_without_three_channels(model):
    with pytest.raises(InputError, match="pointmap"):
        model(torch.rand(1, 4, 32, 32))


@pytest.fixture(scope="module")
def official():
    return build_on_meta(lambda: PointPatchEmbed(PRESETS["official"]))


def test_official_module_has_the_checkpoint_keys_and_shapes(official):
    assert_matches_manifest(official, "manifest_ss_generator.json", PREFIX)


def test_official_token_count(official):
    with torch.device("meta"):
        tokens = official(torch.empty(2, 3, 518, 518))
    assert tokens.shape == (2, 1024, 512)
