#!/usr/bin/env python3
"""Check the flows' fused element-wise code on a CUDA GPU: time and agreement, eager against compiled.

    python scripts/check_fused.py                         # official SS + SLAT flows, bf16, ~25k voxels
    python scripts/check_fused.py --profile out/fused     # also kernel time by kind, eager and fused
    python scripts/check_fused.py --device cpu --preset tiny --voxels 2000   # smoke run of the script (inductor C++)

Builds the `official` SS flow and SLAT flow with seeded random weights (the rule of `engine/random_weights.py`) in
bf16, on the inputs `scripts/bench_pipeline.py` uses for its flow study (stage 1: one guided call of 2 rows at
t = 300; stage 2: one guided call of 2 items on its fixed ellipsoid-shell voxel set, guided keys/values), and
runs each call with `engine.models.fused` off (eager) and on (torch.compile). Prints the compile time of the
first guided and unguided call, the median time per call, the same calls replayed from a captured CUDA graph,
and per output |fused − eager| / |eager| next to |eager − float32| / |float32| (the bf16 rounding the model
already has), float32 being the same weights run eagerly in float32. Under a minute on an H200 (50 s with a
cold inductor cache, 25 s warm).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

from bench_pipeline import ShellShape, captured, profile_call, relative_error, time_call  # noqa: E402
from engine.config import MODEL_NAMES, preset  # noqa: E402
from engine.model_store import build  # noqa: E402
from engine.models import fused  # noqa: E402
from engine.models.slat_flow import SlatVelocity  # noqa: E402
from engine.noise import stage1_shapes  # noqa: E402
from engine.random_weights import randomize_  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--voxels", type=int, default=25000, help="about this many fine voxels for stage 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=("official", "tiny"), default="official")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (float32, no CUDA graphs)")
    p.add_argument("--profile", type=Path, default=None, help="write torch.profiler tables of the guided calls here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("check_fused needs a CUDA GPU (or --device cpu --preset tiny for a smoke run)")
        return 2
    if not fused.ENABLED:
        print(f"note: {fused.ENV_SWITCH}=0 is set; this check turns the fused path on itself")
    if device.type == "cpu":
        fused.DEVICE_TYPES = ("cpu",)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = preset(args.preset)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {args.preset} preset, {dtype}")

    with torch.inference_mode():
        t = time.perf_counter()
        ss32, slat32 = (_random_network(name, config, args.seed, device) for name in ("ss_flow", "slat_flow"))
        ss, slat = (copy.deepcopy(m).to(dtype) for m in (ss32, slat32))
        calls, calls32 = _calls(ss, slat, ss32, slat32, config, args, device, dtype)
        print(f"built both flows with random weights in {time.perf_counter() - t:.1f} s")

        # Float32 reference outputs (eager), then the float32 copies are freed.
        fused.ENABLED = False
        exact = {name: _host(fn()) for name, fn in calls32.items() if "unguided" not in name}
        del ss32, slat32, calls32
        torch.cuda.empty_cache()

        rows: list[list[str]] = []
        for name, fn in calls.items():
            fused.ENABLED = False
            eager = _host(fn())
            eager_ms = 1e3 * time_call(fn, device, warmup=2, repeats=10)
            eager_graph_ms = _graph_ms(fn, device)
            fused.ENABLED = True
            t = time.perf_counter()
            out = _host(fn())  # compiles on the first call with these shapes (_host waits for the result)
            compile_s = time.perf_counter() - t
            fused_ms = 1e3 * time_call(fn, device, warmup=2, repeats=10)
            fused_graph_ms = _graph_ms(fn, device)
            diff = {k: relative_error(out[k], eager[k]) for k in eager}
            line = [name, f"{compile_s:.1f}", f"{eager_ms:.2f}", f"{fused_ms:.2f}", f"{eager_graph_ms:.2f}",
                    f"{fused_graph_ms:.2f}", f"{max(diff.values()):.1e}"]  # fmt: skip
            if name in exact:
                line.append(f"{max(relative_error(eager[k], exact[name][k]) for k in eager):.1e}")
                line.append(f"{max(relative_error(out[k], exact[name][k]) for k in eager):.1e}")
            rows.append(line)
            print(f"{name}: per output |fused - eager| / |eager| " + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()))
            if args.profile is not None and "unguided" not in name:
                args.profile.mkdir(parents=True, exist_ok=True)
                for mode in (False, True):
                    fused.ENABLED = mode
                    tag = f"{name.split()[0]}_{name.split()[1]}_{'fused' if mode else 'eager'}"
                    summary = profile_call(fn, device, args.profile / f"{tag}.txt")
                    kinds = ", ".join(f"{k} {v:.2f}" for k, v in summary["by_kind_ms"].items())
                    print(f"  profile {tag}: {summary['kernel_ms']:.2f} ms in {summary['kernels']} kernels: {kinds}")
        fused.ENABLED = True

    head = ["call", "compile s", "eager ms", "fused ms", "eager graph ms", "fused graph ms", "fused vs eager",
            "eager vs fp32", "fused vs fp32"]
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for line in rows:
        print("| " + " | ".join(line + [""] * (len(head) - len(line))) + " |")
    print(f"\nrelative differences: max over outputs of |a - b| / |b|; compile failure: {fused.compile_failure()}")
    try:
        from torch._dynamo.utils import counters

        print(f"compiled graphs: {counters['stats']['unique_graphs']}")
    except (ImportError, KeyError):
        pass
    return 0 if fused.compile_failure() is None else 1


def _graph_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Median ms of `fn` replayed from a captured CUDA graph (NaN on the CPU)."""
    if device.type != "cuda":
        return float("nan")
    return 1e3 * time_call(captured(fn, device), device, warmup=2, repeats=10)


def _random_network(name: str, config, seed: int, device: torch.device) -> torch.nn.Module:
    with torch.device(device):
        module = build(name, config)
    if hasattr(module, "reset_buffers"):
        module.reset_buffers()
    return randomize_(module, seed * 1000 + MODEL_NAMES.index(name)).eval().requires_grad_(False)


def _calls(ss, slat, ss32, slat32, config, args, device, dtype) -> tuple[dict[str, Callable], dict[str, Callable]]:
    """The guided (2 rows / items) and unguided (1) calls of both flows, in `dtype` and in float32."""
    gen = torch.Generator(device).manual_seed(args.seed + 99)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device)

    shapes = stage1_shapes(config.ss_flow.resolution, config.ss_flow.shape_channels)
    lat2 = {k: randn(2, *v[1:]) for k, v in shapes.items()}
    t2, d2 = torch.full((2,), 300.0, device=device), torch.zeros(2, device=device)
    cond1 = randn(1, config.ss_condition.num_tokens, config.ss_flow.cond_channels)
    shell = ShellShape.fit(args.voxels, config.slat_flow.resolution, device)
    print(f"stage 2 voxels: {shell.describe()}")
    x2 = randn(2, shell.coords.shape[0], config.slat_flow.in_channels)
    cond2 = randn(1, config.slat_condition.num_tokens, config.slat_flow.cond_channels)

    def make(ss, slat, dt) -> dict[str, Callable]:
        lat = {k: v.to(dt) for k, v in lat2.items()}
        kv1, kv2 = ss.condition_kv(cond1.to(dt)), slat.condition_kv(cond2.to(dt))
        g1, g2 = ss.guided_kv(kv1), slat.guided_kv(kv2)
        velocity = SlatVelocity(slat, shell.coords)
        x = x2.to(dt)
        return {
            "stage_1 guided (2 rows)": lambda: ss(lat, t2, d=d2, cond_kv=g1),
            "stage_1 unguided (1 row)": lambda: ss({k: v[:1] for k, v in lat.items()}, t2[:1], d=d2[:1], cond_kv=kv1),
            "stage_2 guided (2 items)": lambda: {"velocity": velocity(x, t2, None, g2)},
            "stage_2 unguided (1 item)": lambda: {"velocity": velocity(x[:1], t2[:1], None, kv2)},
        }

    return make(ss, slat, dtype), make(ss32, slat32, torch.float32)


def _host(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float().cpu() for k, v in out.items()}


if __name__ == "__main__":
    sys.exit(main())
