"""The speed paths compute what the plain paths compute (tiny presets, float32, CPU): guided calls with the
unconditional rows' cross-attention as a per-block constant, the conditional keys/values held once, the fused
norms, the attention-kernel preference, and loading with the cast before the copy."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.model_store import ModelStore, to_device
from engine.models.attention import (
    CrossAttention,
    GuidedKV,
    MultiHeadRMSNorm,
    attention,
    attention_kernels,
    qk_rms_norm,
)
from engine.models.slat_flow import PRESETS as SLAT_PRESETS
from engine.models.slat_flow import SlatFlowModel, SlatVelocity
from engine.models.ss_flow import POSE_MODALITIES, SHAPE, STREAMS, SSFlow
from engine.models.ss_flow import PRESETS as SS_PRESETS
from engine.sampling import STAGE1, STAGE2, sample
from engine.sparse.tensor import SparseTensor
from tests.engine.parity import assert_close
from tests.engine.random_inputs import random_voxels, randomized

SS_TINY = SS_PRESETS["tiny"]
SLAT_TINY = SLAT_PRESETS["tiny"]


# ---- the unconditional cross-attention is a constant


def test_cross_attention_over_all_zero_tokens_is_the_null_output_for_every_query():
    gen = torch.Generator().manual_seed(101)
    layer = randomized(CrossAttention(32, 24, 4), gen)
    x = torch.randn(3, 11, 32, generator=gen)
    with torch.no_grad():
        plain = layer(x, torch.zeros(3, 7, 24))
        constant = layer.null_output().expand(3, 11, 32)
        other = layer(x, torch.randn(3, 7, 24, generator=gen))
    assert_close(constant, plain, 1e-6, 1e-6, "null output")
    assert (other - plain).abs().max() > 1e-2  # a real condition does change it


def test_ss_flow_guided_kv_gives_the_velocity_of_the_zeroed_condition_batch():
    gen = torch.Generator().manual_seed(102)
    model = _random_ss_flow(SS_TINY, gen)
    cond = torch.randn(2, 9, SS_TINY.cond_channels, generator=gen)  # B = 2 conditional rows
    latents = _ss_latents(SS_TINY, 4, gen)  # [cond; uncond] rows, all different
    t, d = torch.rand(4, generator=gen) * 1000, torch.rand(4, generator=gen) * 100
    with torch.no_grad():
        kv = model.condition_kv(cond)
        plain = model(latents, t, d=d, cond_kv=model.condition_kv(torch.cat([cond, cond * 0])))
        fast = model(latents, t, d=d, cond_kv=model.guided_kv(kv))
    for name in latents:
        assert_close(fast[name], plain[name], 1e-5, 1e-5, name)
    assert (plain[SHAPE][:2] - plain[SHAPE][2:]).abs().max() > 1e-2  # the rows do differ


def test_guided_kv_holds_the_conditional_keys_values_once():
    gen = torch.Generator().manual_seed(103)
    ss = _random_ss_flow(SS_TINY, gen)
    slat = _random_slat_flow(SLAT_TINY, gen)
    with torch.no_grad():
        kv = ss.condition_kv(torch.randn(1, 5, SS_TINY.cond_channels, generator=gen))
        guided = ss.guided_kv(kv)
        kv2 = slat.condition_kv(torch.randn(1, 5, SLAT_TINY.cond_channels, generator=gen))
        guided2 = slat.guided_kv(kv2)
    for block, block_kv in zip(guided, kv):
        for s in STREAMS:
            assert isinstance(block[s], GuidedKV) and block[s].rows == 2
            assert block[s].k is block_kv[s][0] and block[s].v is block_kv[s][1]  # the same tensors, no copy
    assert all(g.k is k and g.v is v for g, (k, v) in zip(guided2, kv2))


def test_slat_flow_guided_kv_gives_the_velocity_of_the_zeroed_condition_batch():
    gen = torch.Generator().manual_seed(104)
    model = _random_slat_flow(SLAT_TINY, gen)
    coords = random_voxels(gen, 300, 24)
    n = coords.shape[0]
    x = torch.randn(4, n, SLAT_TINY.in_channels, generator=gen)  # B = 2 conditional items, 2 unconditional
    t = torch.rand(4, generator=gen) * 1000
    cond = torch.randn(2, 6, SLAT_TINY.cond_channels, generator=gen)
    velocity = SlatVelocity(model, coords)
    with torch.no_grad():
        plain = velocity(x, t, None, model.condition_kv(torch.cat([cond, cond * 0])))
        fast = velocity(x, t, None, model.guided_kv(model.condition_kv(cond)))
    assert_close(fast, plain, 1e-5, 1e-5, "guided slat velocity")
    assert (plain[:2] - plain[2:]).abs().max() > 1e-2


def test_slat_flow_guided_kv_on_items_with_different_voxels():
    # Items of different voxel sets: no dense (B, L) view, the per-voxel modulation path, the conditional item's
    # voxels found among the sorted coarse voxels.
    gen = torch.Generator().manual_seed(105)
    model = _random_slat_flow(SLAT_TINY, gen)
    a, b = random_voxels(gen, 200, 20), random_voxels(gen, 260, 20)
    coords = torch.cat([a, b.index_fill(1, torch.tensor([0]), 1)])  # item 0: a (conditional), item 1: b
    x = SparseTensor(coords, torch.randn(coords.shape[0], SLAT_TINY.in_channels, generator=gen))
    t = torch.rand(2, generator=gen) * 1000
    cond = torch.randn(1, 6, SLAT_TINY.cond_channels, generator=gen)
    with torch.no_grad():
        plain = model(x, t, cond_kv=model.condition_kv(torch.cat([cond, cond * 0])))
        fast = model(x, t, cond_kv=model.guided_kv(model.condition_kv(cond)))
    assert_close(fast.feats, plain.feats, 1e-5, 1e-5, "different voxel sets")


def test_guided_kv_refuses_a_batch_of_another_size():
    gen = torch.Generator().manual_seed(106)
    model = _random_ss_flow(SS_TINY, gen)
    with torch.no_grad():
        guided = model.guided_kv(model.condition_kv(torch.randn(1, 5, SS_TINY.cond_channels, generator=gen)))
        with pytest.raises(ValueError, match="2 unconditional|1 conditional"):
            model(_ss_latents(SS_TINY, 3, gen), torch.rand(3, generator=gen) * 1000, cond_kv=guided)


def test_both_samplers_give_the_same_latents_with_the_guided_constants():
    # Default-quality guidance (CFG 7 for stage 1, CFG 1 for stage 2) over a few steps, tiny presets, float32.
    gen = torch.Generator().manual_seed(107)
    ss = _random_ss_flow(SS_TINY, gen)
    cond = torch.randn(1, 9, SS_TINY.cond_channels, generator=gen)
    noise = _ss_latents(SS_TINY, 1, gen)
    stage1 = replace(STAGE1, steps=4, cfg_interval=(0.0, 1000.0))
    slat = _random_slat_flow(SLAT_TINY, gen)
    cond2 = torch.randn(1, 6, SLAT_TINY.cond_channels, generator=gen)
    coords = random_voxels(gen, 300, 24)
    noise2 = torch.randn(1, coords.shape[0], SLAT_TINY.in_channels, generator=gen)
    stage2 = replace(STAGE2, steps=4)
    velocity2 = SlatVelocity(slat, coords)
    with torch.no_grad():
        kv = ss.condition_kv(cond)
        plain = sample(ss.velocity, noise, kv, stage1, guided_condition=ss.condition_kv(torch.cat([cond, cond * 0])))
        fast = sample(ss.velocity, noise, kv, stage1, guided_condition=ss.guided_kv(kv))
        kv2 = slat.condition_kv(cond2)
        zeroed2 = slat.condition_kv(torch.cat([cond2, cond2 * 0]))
        plain2 = sample(velocity2, noise2, kv2, stage2, guided_condition=zeroed2)
        fast2 = sample(velocity2, noise2, kv2, stage2, guided_condition=slat.guided_kv(kv2))
    for name in noise:
        assert_close(fast[name], plain[name], 1e-4, 1e-4, f"stage 1 {name}")
    assert_close(fast2, plain2, 1e-4, 1e-4, "stage 2")


# ---- fused norms, attention kernels


def test_multi_head_rms_norm_is_normalize_times_gamma_times_sqrt_d():
    gen = torch.Generator().manual_seed(108)
    norm = MultiHeadRMSNorm(16, 4)
    with torch.no_grad():
        norm.gamma.copy_(1 + 0.3 * torch.randn(4, 16, generator=gen))
    x = torch.randn(2, 30, 3, 4, 16, generator=gen).unbind(2)[1]  # strided like a to_qkv split
    x[0, 0, 0] = 0  # an all-zero head stays zero, as with F.normalize
    with torch.no_grad():
        assert_close(norm(x), _normalize_reference(x, norm.gamma), 1e-6, 1e-6, "rms norm")


def test_q_and_k_normalised_together_equal_their_own_norms_and_stay_differentiable():
    gen = torch.Generator().manual_seed(113)
    q_norm, k_norm = MultiHeadRMSNorm(8, 3), MultiHeadRMSNorm(8, 3)
    with torch.no_grad():
        q_norm.gamma.copy_(1 + 0.3 * torch.randn(3, 8, generator=gen))
        k_norm.gamma.copy_(1 + 0.3 * torch.randn(3, 8, generator=gen))
    qkv = torch.randn(2, 10, 3, 3, 8, generator=gen)  # (B, L, 3, H, D)
    with torch.no_grad():
        both = qk_rms_norm(qkv[:, :, :2], q_norm, k_norm)
    assert both.shape == (2, 10, 2, 3, 8)
    assert_close(both[:, :, 0], _normalize_reference(qkv[:, :, 0], q_norm.gamma), 1e-6, 1e-6, "q")
    assert_close(both[:, :, 1], _normalize_reference(qkv[:, :, 1], k_norm.gamma), 1e-6, 1e-6, "k")
    # With gradients on (training), the same values through a differentiable path.
    x = qkv[:, :, 0].clone().requires_grad_(True)
    y = q_norm(x)
    y.square().sum().backward()
    assert_close(y.detach(), _normalize_reference(qkv[:, :, 0], q_norm.gamma), 1e-6, 1e-6, "q with grad")
    assert x.grad is not None and q_norm.gamma.grad is not None and torch.isfinite(x.grad).all()


def test_preferred_attention_kernels_give_the_same_attention_and_reject_unknown_names():
    gen = torch.Generator().manual_seed(109)
    q, k, v = (torch.randn(2, 13, 4, 8, generator=gen) for _ in range(3))
    default = attention(q, k, v)
    with attention_kernels(("cudnn", "flash")):  # not on the CPU: PyTorch falls back to the others
        preferred = attention(q, k, v)
    with attention_kernels(()):
        none = attention(q, k, v)
    assert_close(preferred, default, 1e-6, 1e-6, "preferred kernels")
    assert_close(none, default, 0, 0, "no preference")
    with pytest.raises(ValueError, match="unknown attention kernel"):
        with attention_kernels(("fastest",)):
            pass


# ---- loading: cast before the copy


def test_to_device_casts_floating_tensors_keeps_integers_and_shared_tensors():
    gen = torch.Generator().manual_seed(110)
    weight = torch.randn(5, 7, generator=gen)
    state = {"a.weight": weight, "tied.weight": weight, "table": torch.randint(0, 9, (4,), generator=gen)}
    out = to_device(state, torch.device("cpu"), torch.bfloat16)
    assert out["a.weight"].dtype == torch.bfloat16 and torch.equal(out["a.weight"], weight.to(torch.bfloat16))
    assert out["tied.weight"] is out["a.weight"]
    assert out["table"].dtype == torch.int64 and torch.equal(out["table"], state["table"])


def test_model_store_loads_in_the_compute_dtype_with_the_weights_values():
    from engine.config import preset

    config = preset("tiny")
    gen = torch.Generator().manual_seed(111)
    state = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in SSFlow(config.ss_flow).state_dict().items()}
    model = ModelStore(config, lambda name: state, torch.device("cpu"), torch.bfloat16).get("ss_flow")
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in loaded.items():
        assert value.dtype == torch.bfloat16, key
        assert torch.equal(value, state[key].to(torch.bfloat16)), key
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned staging path needs a CUDA GPU")
def test_to_device_through_pinned_staging_equals_a_plain_copy_and_cast():
    gen = torch.Generator().manual_seed(112)
    state = {"big": torch.randn(3_000_001, generator=gen), "small": torch.randn(7, 3, generator=gen),
             "ints": torch.arange(10)}  # fmt: skip
    out = to_device(state, torch.device("cuda"), torch.bfloat16, chunk_bytes=1 << 20)  # many chunks
    for key, value in state.items():
        expected = value.to("cuda", torch.bfloat16 if value.is_floating_point() else value.dtype)
        assert torch.equal(out[key], expected), key


# ---- helpers


def _normalize_reference(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The plain per-head RMS norm: F.normalize(x) · gamma · sqrt(D), in float64."""
    return torch.nn.functional.normalize(x.double(), dim=-1) * gamma.detach().double() * x.shape[-1] ** 0.5



def _random_ss_flow(cfg, gen: torch.Generator) -> SSFlow:
    return randomized(SSFlow(cfg), gen)


def _random_slat_flow(cfg, gen: torch.Generator) -> SlatFlowModel:
    return randomized(SlatFlowModel(cfg), gen)


def _ss_latents(cfg, batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    latents = {SHAPE: torch.randn(batch, cfg.resolution**3, cfg.shape_channels, generator=gen)}
    for name, channels in zip(POSE_MODALITIES, cfg.pose_channels):
        latents[name] = torch.randn(batch, 1, channels, generator=gen)
    return latents
