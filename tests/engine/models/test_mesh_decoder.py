"""The SLAT mesh decoder network against the official outputs (parity mesh_decoder) and checkpoint manifest."""
from __future__ import annotations

import json

import pytest
import torch

from engine.models.mesh_decoder import PRESETS, MeshDecoder, MeshDecoderConfig
from engine.models.slat_decoder import SlatDecoderConfig
from engine.sparse.tensor import SparseTensor
from tests.engine.manifests import assert_matches_manifest, build_on_meta, tiny_checkpoint
from tests.engine.parity import assert_close, load_case
from tests.engine.sparse.random_voxels import random_items
from tests.paths import PARITY

PARITY_CONFIG = MeshDecoderConfig(
    trunk=SlatDecoderConfig(resolution=16, model_channels=64, num_blocks=2, num_heads=4, window_size=4),
    groupnorm_groups=4,  # the parity case's GroupNorm groups (real: 32)
)


@pytest.fixture(scope="module")
def case():
    return load_case("mesh_decoder")


@pytest.fixture(scope="module")
def model(case):
    assert case.meta["config"]["subdivide_groupnorm_groups"] == PARITY_CONFIG.groupnorm_groups
    model = MeshDecoder(PARITY_CONFIG).eval()
    model.load_state_dict(case.params, strict=True)
    return model


def test_matches_official_trunk_subdivisions_and_raw_output_with_coords(case, model):
    x = SparseTensor(case.inputs["coords"], case.inputs["feats"])
    with torch.no_grad():
        h = model.trunk(x)
        assert_close(h.feats, case.outputs["trunk"], atol=1e-5, rtol=1e-5, what="trunk")
        for i, block in enumerate(model.upsample):
            h = block(h)
            assert torch.equal(h.coords, case.outputs[f"upsample{i}.coords"]), f"upsample{i}.coords"
            assert_close(h.feats, case.outputs[f"upsample{i}.feats"], atol=1e-5, rtol=1e-5, what=f"upsample{i}.feats")
        raw = model(x)
    assert torch.equal(raw.coords, case.outputs["raw_coords"])
    assert_close(raw.feats, case.outputs["raw"], atol=1e-5, rtol=1e-5, what="raw")


def test_official_preset_has_the_checkpoint_keys_and_shapes():
    assert_matches_manifest(build_on_meta(lambda: MeshDecoder(PRESETS["official"])), "manifest_slat_decoder_mesh.json")


def test_tiny_preset_loads_the_official_format_tiny_checkpoint():
    state = tiny_checkpoint("slat_decoder_mesh.ckpt")
    groups = json.loads((PARITY / "official_format_tiny" / "not_in_yaml.json").read_text())["mesh_decoder"]
    assert PRESETS["tiny"].groupnorm_groups == groups["subdivide_groupnorm_groups"]["this_folder"]
    assert PRESETS["official"].groupnorm_groups == groups["subdivide_groupnorm_groups"]["real_release"]
    MeshDecoder(PRESETS["tiny"]).load_state_dict(state, strict=True)


def test_batch_of_two_equals_two_single_calls():
    gen = torch.Generator().manual_seed(41)
    model = MeshDecoder(PRESETS["tiny"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)
    batched, items = random_items(gen, (30, 22), grid=12, channels=8)
    with torch.no_grad():
        both = model(batched)
        singles = [model(item) for item in items]
    assert_close(both.feats, torch.cat([s.feats for s in singles]), 1e-5, 1e-5, "batched raw")
    assert torch.equal(both.coords[:, 1:], torch.cat([s.coords[:, 1:] for s in singles]))


def test_brick_wise_convolutions_match_the_official_outputs_too(case, model, monkeypatch):
    # On CUDA the subdivided voxels' convolutions run brick-wise through conv3d (engine/sparse/bricks.py); force
    # that path on the CPU and hold it to the same parity outputs.
    from engine.sparse import conv

    monkeypatch.setattr(conv, "BRICK_DEVICES", ("cpu",))
    calls = []
    brick_conv3d = conv.brick_conv3d
    monkeypatch.setattr(conv, "brick_conv3d", lambda *a: calls.append(a[2]) or brick_conv3d(*a))
    x = SparseTensor(case.inputs["coords"], case.inputs["feats"])
    with torch.no_grad():
        raw = model(x)
    assert calls == [1, 1, 2, 2]  # both 3x3x3 convs of both subdivide blocks, at 2x and 4x
    assert_close(raw.feats, case.outputs["raw"], atol=1e-5, rtol=1e-5, what="raw (brick-wise)")
