"""The stage-1 MoT flow model against the official outputs (parity ss_flow_mot) and checkpoint manifest."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.models.embeddings import absolute_position_embedding
from engine.models.ss_flow import POSE_MODALITIES, PRESETS, SHAPE, SSFlow, SSFlowConfig
from tests.engine.manifests import assert_matches_manifest, build_on_meta
from tests.engine.parity import assert_close, load_case

CKPT_PREFIX = "_base_models.generator.reverse_fn.backbone."
PARITY_CONFIG = SSFlowConfig(model_channels=64, cond_channels=64, num_blocks=2, num_heads=4, resolution=8)


@pytest.fixture(scope="module")
def case():
    return load_case("ss_flow_mot")


@pytest.fixture(scope="module")
def official_model(case):
    model = SSFlow(PARITY_CONFIG).eval()
    model.load_state_dict(case.params, strict=True)
    return model


@pytest.mark.parametrize("call", ["cond_d0", "uncond_d0", "cond_d250", "cond_nod"])
def test_matches_official_velocity_for_cond_uncond_shortcut_and_no_d(case, official_model, call):
    latents = {k.removeprefix("latent."): v for k, v in case.inputs.items() if k.startswith("latent.")}
    cond = case.inputs["cond"] * (0 if call.startswith("uncond") else 1)
    d = {"cond_d0": case.inputs["d0"], "uncond_d0": case.inputs["d0"], "cond_d250": case.inputs["d250"]}.get(call)
    with torch.no_grad():
        out = official_model(latents, case.inputs["t"], cond, d)
    assert set(out) == set(latents)
    for name, v in out.items():
        assert_close(v, case.outputs[f"{call}.{name}"], atol=1e-5, rtol=1e-5, what=f"{call}.{name}")


def test_official_preset_has_the_checkpoint_keys_and_shapes():
    model = build_on_meta(lambda: SSFlow(PRESETS["official"]))
    assert_matches_manifest(model, "manifest_ss_generator.json", CKPT_PREFIX)


def test_tiny_preset_builds_on_meta_and_reset_buffers_restores_the_position_table():
    model = build_on_meta(lambda: SSFlow(PRESETS["tiny"]))
    model.to_empty(device="cpu")
    model.reset_buffers()
    res, c = PRESETS["tiny"].resolution, PRESETS["tiny"].model_channels
    # token n = x·res² + y·res + z
    n = torch.tensor([0, 1, res, res * res, 5 * res * res + 3 * res + 7])
    xyz = torch.stack([n // (res * res), (n // res) % res, n % res], dim=1)
    assert_close(model.latent_mapping[SHAPE].pos_emb[n], absolute_position_embedding(xyz, c), 0, 0, "pos_emb rows")
    assert model.latent_mapping[SHAPE].pos_emb.shape == (res**3, c)


def test_batch_of_two_equals_two_single_calls():
    gen = torch.Generator().manual_seed(11)
    cfg = replace(PRESETS["tiny"], resolution=8)  # 512 shape tokens keep it quick
    model = _random_model(cfg, gen)
    latents = _random_latents(cfg, 2, gen)
    cond = torch.randn(2, 7, cfg.cond_channels, generator=gen)
    t = torch.rand(2, generator=gen) * 1000
    d = torch.rand(2, generator=gen) * 500
    with torch.no_grad():
        both = model(latents, t, cond, d)
        singles = [model({k: v[i : i + 1] for k, v in latents.items()}, t[i : i + 1], cond[i : i + 1], d[i : i + 1])
                   for i in range(2)]
    for name in latents:
        assert both[name].shape == latents[name].shape
        for i in range(2):
            assert_close(both[name][i : i + 1], singles[i][name], 1e-5, 1e-5, f"{name}[{i}]")


def test_precomputed_condition_keys_values_give_the_same_velocity():
    gen = torch.Generator().manual_seed(12)
    cfg = SSFlowConfig(model_channels=32, cond_channels=24, num_blocks=2, num_heads=2, resolution=4)
    model = _random_model(cfg, gen)
    latents = _random_latents(cfg, 3, gen)
    cond = torch.randn(3, 5, 24, generator=gen)
    t, d = torch.rand(3, generator=gen) * 1000, torch.rand(3, generator=gen) * 100
    with torch.no_grad():
        direct = model(latents, t, cond, d)
        cached = model(latents, t, d=d, cond_kv=model.condition_kv(cond))
        adapter = model.velocity(latents, t, d, cond)  # the sampler's calling convention, tensor condition
        other = model(latents, t, cond + 1, d)
    for name in latents:
        assert_close(cached[name], direct[name], 0, 0, name)
        assert_close(adapter[name], direct[name], 0, 0, name)
    assert not torch.allclose(other[SHAPE], direct[SHAPE])  # the condition reaches the output


def test_d_embedding_changes_the_velocity_only_when_given():
    gen = torch.Generator().manual_seed(13)
    cfg = SSFlowConfig(model_channels=32, cond_channels=32, num_blocks=1, num_heads=2, resolution=4)
    model = _random_model(cfg, gen)
    latents = _random_latents(cfg, 1, gen)
    cond, t = torch.randn(1, 5, 32, generator=gen), torch.tensor([370.0])
    with torch.no_grad():
        no_d = model(latents, t, cond)
        d0 = model(latents, t, cond, torch.tensor([0.0]))
    # d_embedder(0) is not zero, so passing d = 0 differs from leaving d out
    assert not torch.allclose(no_d["translation"], d0["translation"])


# ---- helpers


def _random_model(cfg: SSFlowConfig, gen: torch.Generator) -> SSFlow:
    model = SSFlow(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5 * (1 if p.dim() >= 2 else 0.3))
    return model


def _random_latents(cfg: SSFlowConfig, batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    latents = {SHAPE: torch.randn(batch, cfg.resolution**3, cfg.shape_channels, generator=gen)}
    for name, channels in zip(POSE_MODALITIES, cfg.pose_channels):
        latents[name] = torch.randn(batch, 1, channels, generator=gen)
    return latents
