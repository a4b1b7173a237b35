"""MoGeModel against the upstream goldens (tiny config) and the public checkpoint's manifest (official config)."""
from __future__ import annotations

import json

import pytest
import torch

from engine.moge.model import IMAGENET_MEAN, IMAGENET_STD, MoGeModel, PRESETS, resized_size
from tests.engine.manifests import assert_matches_manifest, build_on_meta
from tests.engine.parity import assert_close
from tests.paths import PARITY

# (golden forward prefix, input key, num_tokens) as in moge_v1_tiny.meta.json
FORWARD_CASES = [("forward", "image", 30), ("forward_proj", "image_batch", 20), ("forward_fov", "image", 12)]


def assert_matches_golden(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """The README's check: |Δ| ≤ 2e-5·max|golden| on finite values."""
    assert_close(actual, expected, atol=2e-5 * expected.abs().max().item(), rtol=0, what=what)


def test_intermediates_match_upstream_for_the_main_case(tiny, golden):
    image = golden["input.image"][None]
    with torch.no_grad():
        image_resized, image_14 = tiny.preprocess(image, 30)
        features = tiny.backbone(image_14, tiny.cfg.intermediate_layers)
        points, mask = tiny.head(features, image_resized.shape[-2:])
    assert_matches_golden(image_resized, golden["debug.image_resized_normalized"], "image_resized_normalized")
    assert_matches_golden(image_14, golden["debug.image_14"], "image_14")
    assert len(features) == 2
    for i, (patch_tokens, cls_token) in enumerate(features):
        assert_matches_golden(patch_tokens, golden[f"debug.features.{i}.patch_tokens"], f"features.{i}.patch_tokens")
        assert_matches_golden(cls_token, golden[f"debug.features.{i}.cls_token"], f"features.{i}.cls_token")
    assert_matches_golden(points, golden["debug.head.points"], "head.points")
    assert_matches_golden(mask, golden["debug.head.mask"], "head.mask")


@pytest.mark.parametrize("prefix,input_key,num_tokens", FORWARD_CASES)
def test_forward_matches_upstream_points_and_raw_mask(tiny, golden, prefix, input_key, num_tokens):
    image = golden[f"input.{input_key}"]
    image = image[None] if image.ndim == 3 else image
    with torch.no_grad():
        points, mask = tiny(image, num_tokens)
    assert points.dtype == mask.dtype == torch.float32
    assert_matches_golden(points, golden[f"{prefix}.points"], f"{prefix}.points")
    assert_matches_golden(mask, golden[f"{prefix}.mask"], f"{prefix}.mask")


def test_resized_sizes_match_the_golden_cases():
    assert resized_size(70, 98, 30) == (64, 90)
    assert resized_size(56, 42, 20) == (72, 54)
    assert resized_size(70, 98, 12) == (40, 57)


def test_official_model_builds_on_meta_with_the_checkpoint_keys_and_shapes():
    model = build_on_meta(lambda: MoGeModel(PRESETS["official"]))
    assert_matches_manifest(model, "moge/manifest_moge_vitl.json")
    totals = json.loads((PARITY / "moge" / "manifest_moge_vitl.json").read_text())["totals"]
    assert sum(p.numel() for p in model.parameters()) == totals["num_parameters"]


def test_buffers_are_recomputed_after_to_empty():
    model = build_on_meta(lambda: MoGeModel(PRESETS["tiny"]))
    model.to_empty(device="cpu")
    model.reset_buffers()
    assert torch.equal(model.image_mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.equal(model.image_std.flatten(), torch.tensor(IMAGENET_STD))


def test_position_embedding_is_used_as_is_on_the_native_grid_and_resampled_otherwise(tiny):
    pos = tiny.backbone.pos_embed
    assert tiny.backbone.position_embedding((37, 37)) is pos
    resized = tiny.backbone.position_embedding((4, 6))
    assert resized.shape == (1, 1 + 24, 64)
    assert torch.equal(resized[:, 0], pos[:, 0])
    # scale_factor (g + 0.1) / 37 is not the same sampling as size=(g, g): 36 patches differ from a size-resize.
    grid = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    by_size = torch.nn.functional.interpolate(grid, size=(36, 36), mode="bicubic", align_corners=False)
    ours = tiny.backbone.position_embedding((36, 36))[:, 1:]
    assert not torch.allclose(ours, by_size.flatten(2).transpose(1, 2), atol=1e-4)


def test_bfloat16_weights_run_with_float32_outputs_close_to_float32(tiny, golden):
    model = MoGeModel(PRESETS["tiny"]).eval()
    model.load_state_dict(tiny.state_dict())
    model.to(torch.bfloat16)
    with torch.no_grad():
        points, mask = model(golden["input.image"][None], 30)
    assert points.dtype == mask.dtype == torch.float32
    expected = golden["forward.points"]
    assert (points - expected).abs().max() < 0.05 * expected.abs().max()
    assert (mask - golden["forward.mask"]).abs().max() < 0.05 * golden["forward.mask"].abs().max()
