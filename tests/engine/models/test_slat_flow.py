"""The stage-2 SLAT flow against the official outputs (parity slat_flow, slat_sampler) and checkpoint manifest."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.models.slat_flow import PRESETS, SlatFlowConfig, SlatFlowModel, SlatVelocity
from engine.sampling import STAGE2, sample
from engine.sparse.tensor import SparseTensor
from tests.engine.manifests import assert_matches_manifest, build_on_meta, tiny_checkpoint
from tests.engine.parity import assert_close, load_case

CKPT_PREFIX = "_base_models.generator.reverse_fn.backbone."
PARITY_CONFIG = SlatFlowConfig(model_channels=64, cond_channels=64, num_blocks=2, num_heads=4,
                               io_block_channels=(16,), resolution=16)


@pytest.fixture(scope="module")
def case():
    return load_case("slat_flow")


@pytest.mark.parametrize("call", ["cond", "uncond"])
def test_matches_official_velocity_for_cond_and_uncond(case, call):
    model = SlatFlowModel(PARITY_CONFIG).eval()
    model.load_state_dict(case.params, strict=True)
    x = SparseTensor(case.inputs["coords"], case.inputs["x"][0])
    cond = case.inputs["cond"] * (0 if call == "uncond" else 1)  # upstream's unconditional pass: cond · 0
    with torch.no_grad():
        out = model(x, case.inputs["t"], cond)
    assert out.coords is x.coords
    assert_close(out.feats, case.outputs[call][0], atol=1e-5, rtol=1e-5, what=call)


def test_matches_official_stage2_sampler_with_cfg_1_over_3_steps():
    case = load_case("slat_sampler")
    model = SlatFlowModel(PARITY_CONFIG).eval()
    model.load_state_dict(case.params, strict=True)
    velocity = SlatVelocity(model, case.inputs["coords"])
    cond, states, rows = case.inputs["cond"], [], []

    def counted(x, t, d, kv):
        rows.append(t.shape[0])
        return velocity(x, t, d, kv)

    with torch.no_grad():
        x1 = sample(counted, case.inputs["noise"], model.condition_kv(cond), replace(STAGE2, steps=3),
                    guided_condition=model.condition_kv(torch.cat([cond, cond * 0])),
                    progress=lambda k, n, x: states.append(x))
    assert rows == [2, 2, 1]  # steps 1-2 guided ([cond; uncond] in one batch), step 3 not
    for key, state in zip(["step1", "step2", "x1_normalized"], states):
        assert_close(state, case.outputs[key], atol=1e-4, rtol=1e-4, what=key)
    mean = torch.tensor(case.meta["config"]["slat_mean"])
    std = torch.tensor(case.meta["config"]["slat_std"])
    assert_close(x1[0] * std + mean, case.outputs["slat_feats"], atol=1e-4, rtol=1e-4, what="slat_feats")


def test_batch_of_two_with_the_same_voxels_equals_two_single_calls():
    gen = torch.Generator().manual_seed(21)
    model = _random_model(PRESETS["tiny"], gen)
    coords = _shell_coords(gen, grid=12)
    n = coords.shape[0]
    feats = torch.randn(2, n, 8, generator=gen)
    t = torch.rand(2, generator=gen) * 1000
    cond = torch.randn(2, 6, PRESETS["tiny"].cond_channels, generator=gen)
    with torch.no_grad():
        both = SlatVelocity(model, coords)(feats, t, None, cond)
        singles = [model(SparseTensor(coords, feats[i]), t[i : i + 1], cond[i : i + 1]).feats for i in range(2)]
    for i in range(2):
        assert_close(both[i], singles[i], 1e-5, 1e-5, f"item {i}")
    assert (singles[0] - singles[1]).abs().max() > 1e-3


def test_official_preset_has_the_checkpoint_keys_and_shapes():
    model = build_on_meta(lambda: SlatFlowModel(PRESETS["official"]))
    assert_matches_manifest(model, "manifest_slat_generator.json", CKPT_PREFIX)


def test_tiny_preset_loads_the_official_format_tiny_checkpoint_strictly():
    state = tiny_checkpoint("slat_generator.ckpt", CKPT_PREFIX)
    SlatFlowModel(PRESETS["tiny"]).load_state_dict(state, strict=True)


def _random_model(cfg: SlatFlowConfig, gen: torch.Generator) -> SlatFlowModel:
    model = SlatFlowModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)
    return model


def _shell_coords(gen: torch.Generator, grid: int) -> torch.Tensor:
    """A noisy spherical shell of voxels (batch 0), lexicographic."""
    axis = torch.arange(grid)
    xyz = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    r = (xyz.float() - (grid - 1) / 2).norm(dim=1) + 0.3 * torch.rand(xyz.shape[0], generator=gen)
    keep = (r > grid / 2 - 2.5) & (r < grid / 2 - 1)
    return torch.cat([torch.zeros(int(keep.sum()), 1, dtype=torch.int64), xyz[keep]], dim=1).int()
