"""The fused element-wise chains: what they compute, compiled against eager, and the compile policy.

Compiling runs inductor's C++ backend on the CPU (the GPU gets Triton kernels from the same functions). The
whole-flow check (both tiny flows compiled, about 40 s cold on a 2-core machine, ~10 s with inductor's cache
warm) runs when THREEDFY_COMPILE_TESTS=1; by default one chain is compiled (~5-15 s) and the rest is covered
eagerly here and by the flows' parity tests.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from engine.models import fused
from engine.models.norms import rms_norm_heads
from engine.models.slat_flow import PRESETS as SLAT_PRESETS
from engine.models.slat_flow import SlatFlowModel, SlatVelocity
from engine.models.ss_flow import POSE_MODALITIES, SHAPE, SSFlow
from engine.models.ss_flow import PRESETS as SS_PRESETS
from tests.engine.parity import assert_close
from tests.engine.random_inputs import random_voxels, randomized

WHOLE_FLOWS = os.environ.get("THREEDFY_COMPILE_TESTS") == "1"


@pytest.fixture
def compile_on_cpu(monkeypatch):
    """Compiled code on the CPU for this test; fresh compiled functions and policy state before and after."""
    monkeypatch.setattr(fused, "DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(fused, "ENABLED", True)
    _reset()
    yield
    _reset()


# ---- what the chains compute (eager)


def test_guided_residual_adds_the_head_rows_output_and_the_constant_to_the_rest():
    gen = torch.Generator().manual_seed(201)
    x = torch.randn(3, 5, 8, generator=gen)  # (G, L, C): rows 0..6 conditional (7 rows), the rest unconditional
    head, null_out = torch.randn(7, 8, generator=gen), torch.randn(8, generator=gen)
    shift, scale = torch.randn(3, 1, 8, generator=gen), torch.randn(3, 1, 8, generator=gen)
    with torch.no_grad():
        new, mod = fused.residual_norm_modulate(x, head, null_out, shift, scale, 1e-6)
    flat = x.reshape(15, 8)
    expected = torch.cat([flat[:7] + head, flat[7:] + null_out]).view(3, 5, 8)
    assert_close(new, expected, 1e-6, 1e-6, "residual")
    assert_close(mod, F.layer_norm(expected, (8,), eps=1e-6) * (1 + scale) + shift, 1e-5, 1e-5, "modulated norm")


def test_gated_residual_norm_returns_the_sum_and_its_affine_norm():
    gen = torch.Generator().manual_seed(202)
    x, h = torch.randn(2, 6, 8, generator=gen), torch.randn(2, 6, 8, generator=gen)
    gate = torch.randn(2, 1, 8, generator=gen)
    weight, bias = 1 + 0.2 * torch.randn(8, generator=gen), 0.1 * torch.randn(8, generator=gen)
    with torch.no_grad():
        new, normed = fused.gated_residual_norm(x, gate, h, weight, bias, 1e-6)
    assert_close(new, x + gate * h, 1e-6, 1e-6, "gated residual")
    assert_close(normed, F.layer_norm(x + gate * h, (8,), weight, bias, 1e-6), 1e-5, 1e-5, "norm2")


def test_gated_residual_norm_modulate_adds_the_gated_update_then_modulates_its_norm():
    gen = torch.Generator().manual_seed(206)
    x, h = torch.randn(2, 7, 8, generator=gen), torch.randn(2, 7, 8, generator=gen)
    gate, shift, scale = (torch.randn(2, 1, 8, generator=gen) for _ in range(3))
    with torch.no_grad():
        new, mod = fused.gated_residual_norm_modulate(x, gate, h, shift, scale, 1e-6)
    assert_close(new, x + gate * h, 1e-6, 1e-6, "gated residual")
    assert_close(mod, F.layer_norm(x + gate * h, (8,), eps=1e-6) * (1 + scale) + shift, 1e-5, 1e-5, "modulated")


def test_mot_qkv_gives_the_pose_stream_pose_then_shape_keys_and_values():
    gen = torch.Generator().manual_seed(203)
    qkv_s, qkv_p = torch.randn(2, 9, 3, 2, 4, generator=gen), torch.randn(2, 3, 3, 2, 4, generator=gen)
    gs = (1 + 0.3 * torch.randn(2, 4, generator=gen), 1 + 0.3 * torch.randn(2, 4, generator=gen))
    gp = (1 + 0.3 * torch.randn(2, 4, generator=gen), 1 + 0.3 * torch.randn(2, 4, generator=gen))
    with torch.no_grad():
        q_s, k_s, v_s, q_p, k_p, v_p = fused.mot_qkv(qkv_s, qkv_p, gs, gp)
    assert_close(q_s, rms_norm_heads(qkv_s[:, :, 0], gs[0]), 1e-6, 1e-6, "shape q")
    assert_close(k_p, torch.cat([rms_norm_heads(qkv_p[:, :, 1], gp[1]), k_s], dim=1), 1e-6, 1e-6, "pose keys")
    assert_close(v_p, torch.cat([qkv_p[:, :, 2], qkv_s[:, :, 2]], dim=1), 0, 0, "pose values")
    assert k_p.shape == (2, 12, 2, 4) and q_p.shape == (2, 3, 2, 4)


# ---- compiled against eager


def test_a_compiled_chain_equals_the_eager_one_on_cpu(compile_on_cpu):
    gen = torch.Generator().manual_seed(204)
    x, head = torch.randn(2, 40, 16, generator=gen), torch.randn(40, 16, generator=gen)
    null_out = torch.randn(16, generator=gen)
    shift, scale = torch.randn(2, 1, 16, generator=gen), torch.randn(2, 1, 16, generator=gen)
    args = (x, head, null_out, shift, scale, 1e-6)
    with torch.no_grad():
        compiled = fused.residual_norm_modulate(*args)
        eager = fused.residual_norm_modulate.fn(*args)
    assert fused.compile_failure() is None
    assert fused.residual_norm_modulate._compiled  # the compiled code did run
    for got, want in zip(compiled, eager):
        assert_close(got, want, 1e-5, 1e-5, "compiled chain")


@pytest.mark.skipif(not WHOLE_FLOWS, reason="compiles both tiny flows (~40 s cold): set THREEDFY_COMPILE_TESTS=1")
def test_both_tiny_flows_compiled_equal_eager_on_cpu(compile_on_cpu):
    gen = torch.Generator().manual_seed(205)
    ss, slat = randomized(SSFlow(SS_PRESETS["tiny"]), gen), randomized(SlatFlowModel(SLAT_PRESETS["tiny"]), gen)
    cfg = SS_PRESETS["tiny"]
    latents = {SHAPE: torch.randn(2, cfg.resolution**3, cfg.shape_channels, generator=gen)}
    for name, channels in zip(POSE_MODALITIES, cfg.pose_channels):
        latents[name] = torch.randn(2, 1, channels, generator=gen)
    t, d = torch.rand(2, generator=gen) * 1000, torch.rand(2, generator=gen) * 100
    coords = random_voxels(gen, 300, 24)
    x2 = torch.randn(2, coords.shape[0], SLAT_PRESETS["tiny"].in_channels, generator=gen)
    velocity = SlatVelocity(slat, coords)
    with torch.no_grad():
        kv = ss.condition_kv(torch.randn(1, 9, cfg.cond_channels, generator=gen))
        kv2 = slat.condition_kv(torch.randn(1, 6, SLAT_PRESETS["tiny"].cond_channels, generator=gen))
        calls = {
            "ss guided": lambda: ss(latents, t, d=d, cond_kv=ss.guided_kv(kv)),
            "ss unguided": lambda: ss({k: v[:1] for k, v in latents.items()}, t[:1], d=d[:1], cond_kv=kv),
            "slat guided": lambda: {"v": velocity(x2, t, None, slat.guided_kv(kv2))},
            "slat unguided": lambda: {"v": velocity(x2[:1], t[:1], None, kv2)},
        }
        for name, call in calls.items():
            fused.ENABLED = False
            eager = call()
            fused.ENABLED = True
            compiled = call()
            for key in eager:
                assert_close(compiled[key], eager[key], 1e-5, 1e-5, f"{name} {key}")
    assert fused.compile_failure() is None
    assert all(f._compiled for f in _functions())


# ---- policy


def test_compiled_code_runs_only_where_the_policy_allows(compile_on_cpu, monkeypatch):
    compiled_calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a: compiled_calls.append(1) or fn(*a))
    gen = torch.Generator().manual_seed(206)
    x, shift, scale = (torch.randn(2, 3, 8, generator=gen) for _ in range(3))
    with torch.no_grad():
        fused.norm_modulate(x, shift, scale, 1e-6)
        assert len(compiled_calls) == 1
        monkeypatch.setattr(fused, "ENABLED", False)  # the switch (THREEDFY_COMPILE=0 sets it at import)
        fused.norm_modulate(x, shift, scale, 1e-6)
        monkeypatch.setattr(fused, "ENABLED", True)
        monkeypatch.setattr(fused, "DEVICE_TYPES", ("cuda",))  # a CPU tensor where only CUDA compiles
        fused.norm_modulate(x, shift, scale, 1e-6)
    monkeypatch.setattr(fused, "DEVICE_TYPES", ("cpu",))
    fused.norm_modulate(x, shift, scale, 1e-6)  # gradients on: eager autograd
    assert len(compiled_calls) == 1


def test_varying_rows_compiles_row_counts_dynamic_and_apart_from_the_static_calls(compile_on_cpu, monkeypatch):
    graphs = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend=_recording(graphs), **kw))
    gen = torch.Generator().manual_seed(208)

    def call(rows: int) -> None:
        x, shift, scale = torch.randn(2, rows, 8, generator=gen), *torch.randn(2, 2, 1, 8, generator=gen)
        fused.norm_modulate(x, shift, scale, 1e-6)

    with torch.no_grad():
        call(10)
        with fused.varying_rows():
            call(10)
            call(12)  # served by the dynamic graph
        call(12)  # static calls never take the dynamic graph
    assert graphs == [(2, 10, 8), ("s", "s", 8), (2, 12, 8)]


def test_the_slat_flow_compiles_once_for_objects_of_any_voxel_count(compile_on_cpu, monkeypatch):
    graphs = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend=_recording(graphs), **kw))
    gen = torch.Generator().manual_seed(210)
    cfg = SLAT_PRESETS["tiny"]
    flow = SlatFlowModel(cfg).eval()
    compiled_after = []
    with torch.inference_mode():
        kv = flow.condition_kv(torch.randn(1, 6, cfg.cond_channels, generator=gen))
        for count in (300, 350, 420, 290):  # one object after another, as the worker runs them
            velocity = SlatVelocity(flow, random_voxels(gen, count, 24))
            x = torch.randn(2, count, cfg.in_channels, generator=gen)
            t = torch.rand(2, generator=gen) * 1000
            velocity(x, t, None, flow.guided_kv(kv))
            velocity(x[:1], t[:1], None, kv)
            compiled_after.append(len(graphs))
    assert fused.compile_failure() is None
    assert compiled_after[1:] == compiled_after[:1] * 3  # nothing compiled after the first object


def test_an_error_of_the_call_itself_leaves_compilation_on(compile_on_cpu):
    gen = torch.Generator().manual_seed(211)
    x, scale = torch.randn(2, 3, 8, generator=gen), torch.randn(2, 1, 8, generator=gen)
    with torch.no_grad(), pytest.raises(RuntimeError):
        fused.norm_modulate(x, torch.randn(2, 1, 7, generator=gen), scale, 1e-6)  # shift one channel short
    assert fused.compile_failure() is None


def test_nothing_compiles_while_a_cuda_graph_is_captured(compile_on_cpu, monkeypatch):
    graphs = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend=_recording(graphs), **kw))
    gen = torch.Generator().manual_seed(209)
    x, shift, scale = torch.randn(2, 6, 8, generator=gen), *torch.randn(2, 2, 1, 8, generator=gen)
    with torch.no_grad():
        fused.norm_modulate(x, shift, scale, 1e-6)  # the warm-up compiles
        monkeypatch.setattr(fused, "_capturing", lambda t: True)
        fused.norm_modulate(x, shift, scale, 1e-6)  # compiled code, as before
        out = fused.norm_modulate(x[:, :5], shift, scale, 1e-6)  # new shapes: eager, no compiling
    assert graphs == [(2, 6, 8)]
    assert fused.compile_failure() is None
    assert_close(out, fused.norm_modulate.fn(x[:, :5], shift, scale, 1e-6), 0, 0, "eager during the capture")


def test_past_the_recompile_limit_new_shapes_run_eagerly_and_compiled_ones_stay(compile_on_cpu, monkeypatch):
    graphs = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend=_recording(graphs), **kw))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    gen = torch.Generator().manual_seed(212)
    shift, scale = torch.randn(2, 2, 1, 8, generator=gen)
    inputs = [torch.randn(2, n, 8, generator=gen) for n in (3, 4, 5, 6)]
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [fused.norm_modulate(x, shift, scale, 1e-6) for x in inputs]  # the third shape hits the limit
        fused.norm_modulate(inputs[0], shift, scale, 1e-6)  # a compiled shape: its code, no new graph
        fused.norm_modulate(inputs[3], shift, scale, 1e-6)  # past the limit: eager, no new graph
    assert graphs == [(2, 3, 8), (2, 4, 8)]
    assert fused.norm_modulate.saturated and fused.compile_failure() is None
    assert not [w for w in caught if "THREEDFY_COMPILE" in str(w.message)]  # compilation was not turned off
    for x, out in zip(inputs, outs):
        assert_close(out, fused.norm_modulate.fn(x, shift, scale, 1e-6), 1e-6, 1e-6, "past the limit")


def test_a_compile_failure_warns_once_and_runs_eagerly(compile_on_cpu, monkeypatch):
    def broken(fn, **kw):
        def run(*a):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    gen = torch.Generator().manual_seed(207)
    x, shift, scale = (torch.randn(2, 3, 8, generator=gen) for _ in range(3))
    qkv = torch.randn(2, 3, 3, 2, 4, generator=gen)
    gamma = 1 + 0.3 * torch.randn(2, 4, generator=gen)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fused.norm_modulate(x, shift, scale, 1e-6)
        fused.normed_qkv(qkv, gamma, gamma)  # another function after the failure: eager, no second warning
    assert [str(w.message).count("no C++ compiler found") for w in caught] == [1]
    assert "THREEDFY_COMPILE=0" in str(caught[0].message)
    assert "norm_modulate" in fused.compile_failure()
    assert_close(out, fused.norm_modulate.fn(x, shift, scale, 1e-6), 0, 0, "eager result after the failure")


# ---- helpers


def _functions() -> list[fused.FusedFunction]:
    return [f for f in vars(fused).values() if isinstance(f, fused.FusedFunction)]


def _recording(graphs: list) -> Callable:
    """A torch.compile backend that runs the traced graph as is (no code generation) and appends to `graphs` the
    shape of each compiled graph's first tensor input, symbolic dims as "s"."""

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        values = (n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder")
        shape = next(v.shape for v in values if isinstance(v, torch.Tensor))
        graphs.append(tuple(d if isinstance(d, int) else "s" for d in shape))
        return gm.forward

    return backend


def _reset() -> None:
    torch.compiler.reset()  # forget compiled graphs, so the next test compiles afresh
    fused._failure = None
    for f in _functions():
        f._compiled = {}
        f.saturated = False
