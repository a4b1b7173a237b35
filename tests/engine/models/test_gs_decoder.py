"""The SLAT Gaussian decoder against the official outputs (parity gs_decoder) and checkpoint manifests."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.assets import Gaussians
from engine.models.gs_decoder import PLY_FIELDS, PRESETS, GaussianDecoder, GaussianDecoderConfig, hammersley_offsets
from engine.models.slat_decoder import SlatDecoderConfig
from engine.sparse.tensor import SparseTensor
from tests.engine.manifests import assert_matches_manifest, build_on_meta, tiny_checkpoint
from tests.engine.parity import assert_close, load_case
from tests.engine.sparse.random_voxels import random_items

PARITY_CONFIG = GaussianDecoderConfig(
    trunk=SlatDecoderConfig(resolution=16, model_channels=64, num_blocks=2, num_heads=4, window_size=4)
)


@pytest.fixture(scope="module")
def case():
    return load_case("gs_decoder")


@pytest.fixture(scope="module")
def decoded(case):
    model = GaussianDecoder(PARITY_CONFIG).eval()
    model.load_state_dict(case.params, strict=True)
    x = SparseTensor(case.inputs["coords"], case.inputs["feats"])
    with torch.no_grad():
        trunk = model.trunk(x)
        raw = model(x)
        gaussians = model.raw_gaussians(raw)
    return trunk, raw, gaussians


def test_matches_official_trunk_and_raw_output(case, decoded):
    trunk, raw, _ = decoded
    assert_close(trunk.feats, case.outputs["trunk"], atol=1e-5, rtol=1e-5, what="trunk")
    assert_close(raw.feats, case.outputs["raw"], atol=1e-5, rtol=1e-5, what="raw")


@pytest.mark.parametrize("name", ["xyz", "features_dc", "scaling", "rotation", "opacity"])
def test_matches_official_per_gaussian_raw_attributes(case, decoded, name):
    assert_close(getattr(decoded[2], name), case.outputs[f"_{name}"], atol=1e-5, rtol=1e-5, what=f"_{name}")


def test_matches_official_activated_attributes_and_ply_fields(case, decoded):
    gaussians = decoded[2]
    for name, value in gaussians.activated().items():
        assert_close(value, case.outputs[name], atol=1e-5, rtol=1e-5, what=name)
    assert list(PLY_FIELDS) == case.meta["ply_field_order"]
    assert_close(gaussians.ply_fields(), case.outputs["ply_fields"], atol=1e-5, rtol=1e-5, what="ply_fields")


def test_assets_carry_the_activated_attributes_per_batch_item(case, decoded):
    gaussians = decoded[2]
    (assets,) = gaussians.to_assets()
    assert isinstance(assets, Gaussians) and len(assets) == case.outputs["xyz"].shape[0]
    np.testing.assert_allclose(assets.xyz, case.outputs["xyz"].numpy(), atol=1e-5)
    np.testing.assert_allclose(assets.colors, case.outputs["color_rgb"].numpy(), atol=1e-5)
    np.testing.assert_allclose(assets.opacity, case.outputs["opacity"][:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(assets.rotation, case.outputs["ply_fields"][:, 13:17].numpy(), atol=1e-5)


def test_offset_perturbation_is_computed_like_upstream(case):
    assert_close(hammersley_offsets(32, 1.5), case.params["offset_perturbation"], 0, 0, "offset_perturbation")


@pytest.mark.parametrize("preset,manifest", [("official", "slat_decoder_gs"), ("official_4", "slat_decoder_gs_4")])
def test_official_presets_have_the_checkpoint_keys_shapes_and_buffer(preset, manifest):
    assert_matches_manifest(build_on_meta(lambda: GaussianDecoder(PRESETS[preset])), f"manifest_{manifest}.json")


@pytest.mark.parametrize("preset,name", [("tiny", "slat_decoder_gs"), ("tiny_4", "slat_decoder_gs_4")])
def test_tiny_presets_load_the_official_format_tiny_checkpoints(preset, name):
    state = tiny_checkpoint(f"{name}.ckpt")
    model = build_on_meta(lambda: GaussianDecoder(PRESETS[preset]))
    model.to_empty(device="cpu")
    model.reset_buffers()
    assert_close(model.offset_perturbation, state["offset_perturbation"], 0, 0, "recomputed buffer")
    model.load_state_dict(state, strict=True)


def test_batch_of_two_equals_two_single_calls():
    gen = torch.Generator().manual_seed(31)
    cfg = GaussianDecoderConfig(trunk=SlatDecoderConfig(resolution=16, model_channels=32, num_blocks=2,
                                                         num_heads=2, window_size=4), num_gaussians=4)
    model = GaussianDecoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)
    batched, items = random_items(gen, (70, 55), grid=16, channels=8)
    with torch.no_grad():
        both = model.decode(batched)
        singles = [model.decode(item) for item in items]
    assert_close(both.ply_fields(), torch.cat([s.ply_fields() for s in singles]), 1e-5, 1e-5, "batched ply fields")
    assert [len(g) for g in both.to_assets()] == [70 * 4, 55 * 4]
