"""The rectified-flow Euler sampler against the official stage-1 sampler (parity ss_sampler)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.errors import Cancelled
from engine.models.ss_flow import SSFlow, SSFlowConfig
from engine.sampling import STAGE1, STAGE2, SamplerSettings, sample, time_grid
from tests.engine.parity import assert_close, load_case

PARITY_CONFIG = SSFlowConfig(model_channels=64, cond_channels=64, num_blocks=2, num_heads=4, resolution=8)
MODES = {"cfg": replace(STAGE1, steps=5), "shortcut": replace(STAGE1, steps=5, shortcut=True)}


@pytest.fixture(scope="module")
def case():
    return load_case("ss_sampler")


@pytest.fixture(scope="module")
def model(case):
    model = SSFlow(PARITY_CONFIG).eval()
    model.load_state_dict(case.params, strict=True)
    return model


@pytest.mark.parametrize("mode", ["cfg", "shortcut"])
def test_matches_official_stage1_sampler_at_every_step_with_the_same_network_calls(case, model, mode):
    noise = {k.removeprefix("noise."): v for k, v in case.inputs.items() if k.startswith("noise.")}
    cond = case.inputs["cond"]
    calls, states = [], []

    def velocity(x, t, d, cond_kv):
        rows = t.shape[0]
        for i in range(rows):  # guided calls carry [cond; uncond] rows
            calls.append({"t": float(t[i]), "d": float(d[i]), "cfg_uncond": i >= 1 and rows == 2})
        return model.velocity(x, t, d, cond_kv)

    with torch.no_grad():
        sample(
            velocity,
            noise,
            model.condition_kv(cond),
            MODES[mode],
            guided_condition=model.condition_kv(torch.cat([cond, cond * 0])),
            progress=lambda k, n, x: states.append(x),
        )

    assert calls == case.meta[f"{mode}_network_calls"]
    assert len(states) == 5
    for k, state in enumerate(states, start=1):
        key = f"{mode}.x1" if k == 5 else f"{mode}.step{k}"
        assert set(state) == set(noise)
        for name, value in state.items():
            assert_close(value, case.outputs[f"{key}.{name}"], atol=1e-4, rtol=1e-4, what=f"{key}.{name}")


def test_time_grid_is_the_warped_linspace_of_the_official_sampler(case):
    assert time_grid(5, 3.0) == pytest.approx(case.meta["cfg_t_grid"], abs=1e-15)
    assert time_grid(4, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_tensor_latents_guidance_interval_and_default_unconditional_rows():
    # Stage-2 style: tensor latents, no d, the sampler builds [cond; cond·0] itself. A linear velocity field makes
    # every step checkable by hand.
    gen = torch.Generator().manual_seed(41)
    noise = torch.randn(2, 9, 8, generator=gen)
    cond = torch.randn(2, 3, 8, generator=gen)
    weight = torch.randn(8, 8, generator=gen)
    settings = SamplerSettings(steps=4, rescale_t=1.0, cfg_strength=1.5, cfg_interval=(0.0, 500.0))
    seen = []

    def velocity(x, t, d, c):
        assert d is None
        seen.append((t.tolist(), c.shape[0]))
        return x @ weight + c.mean(dim=1, keepdim=True) * t[:, None, None] / 1000

    out = sample(velocity, noise, cond, settings)

    x = noise.clone()
    for k, (t0, t1) in enumerate(zip(time_grid(4), time_grid(4)[1:])):
        v_c = x @ weight + cond.mean(dim=1, keepdim=True) * t0
        v_u = x @ weight  # unconditional rows see cond·0
        v = (1 + 1.5) * v_c - 1.5 * v_u if t0 * 1000 <= 500 else v_c  # t = 0.5 is still guided (inclusive)
        x = x + v * (t1 - t0)
    assert_close(out, x, 1e-5, 1e-5, "tensor latent")
    assert seen == [([0.0] * 4, 4), ([250.0] * 4, 4), ([500.0] * 4, 4), ([750.0] * 2, 2)]


def test_cancel_check_stops_between_steps_and_raises_cancelled():
    gen = torch.Generator().manual_seed(42)
    noise = torch.randn(1, 5, 3, generator=gen)
    done = []
    with pytest.raises(Cancelled):
        sample(
            lambda x, t, d, c: -x,
            noise,
            torch.randn(1, 2, 3, generator=gen),
            STAGE2,
            progress=lambda k, n, x: done.append((k, n)),
            cancelled=lambda: len(done) == 2,
        )
    assert done == [(1, 25), (2, 25)]


def test_shortcut_needs_a_network_that_takes_d():
    with pytest.raises(ValueError, match="takes_d"):
        sample(lambda x, t, d, c: x, torch.randn(1, 2), None, replace(STAGE2, shortcut=True))


@pytest.mark.parametrize("quality, rows", [("fast", (4, 8)), ("default", (44, 38)), ("high", (88, 76))])
def test_quality_presets_run_the_official_network_rows(quality, rows):
    # fast = the release's fast mode with fewer steps: stage 1 shortcut and stage 2 without guidance
    # (`use_stage2_distillation` only turns stage 2's guidance off); default = 25 + 25 guided steps.
    from engine.config import preset, samplers_for

    gen = torch.Generator().manual_seed(43)
    counted = []
    for settings in samplers_for(preset("tiny"), quality):
        seen = []

        def velocity(x, t, d, c):
            seen.append(t.shape[0])
            return -x

        noise = torch.randn(1, 5, 3, generator=gen)
        sample(velocity, noise, torch.randn(1, 2, 3, generator=gen), settings)
        counted.append(sum(seen))
    assert tuple(counted) == rows
