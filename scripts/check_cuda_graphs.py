#!/usr/bin/env python3
"""Check stage 1's CUDA-graph replay on a GPU: the same latents as eager sampling, and the time per step.

    python scripts/check_cuda_graphs.py                      # official config, bf16

Builds the official SS flow with seeded random weights (the rule and seeds of `scripts/bench_pipeline.py`), one
random condition, and samples at default quality (25 steps with guidance) through `Pipeline.sample_geometry`, from
the same noise, eagerly and from CUDA graphs (one wrapper per run, as with the networks freed after each run; kept
graphs replay the same captures), each `--repeats` times (the first eager run also warms up the process). Stage 2
runs eagerly in the pipeline since session 10 (its captures cost more than its replays save). Prints per mode: wall
time, the time of every step on the GPU's timeline (CUDA events between sampler steps, so launch gaps count),
medians over guided and unguided steps past the first three of each (graphs: two warm-ups and the capture), peak
memory allocated and reserved; then the relative difference max|a - b| / max|b| of the final latents: graphs
against eager, next to eager against eager (the floor). Then the decimation (1 M -> 30k faces) with its rounds
replayed from a graph per repack against eager: time, and whether the meshes are equal to the bit.
Runs in well under two minutes on an H200.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import torch  # noqa: E402

from engine import noise as noise_lib  # noqa: E402
from engine import pipeline as pipeline_mod  # noqa: E402
from engine.config import MODEL_NAMES, preset  # noqa: E402
from engine.cuda_graphs import GraphedVelocity  # noqa: E402
from engine.model_store import build  # noqa: E402
from engine.random_weights import randomize_  # noqa: E402
from engine.sampling import SamplerSettings, time_grid  # noqa: E402

GIB = 1024**3


class RecordingGraphs(GraphedVelocity):
    """GraphedVelocity that notes, when released, how many graphs it held and whether it fell back to eager."""

    seen: list[tuple[int, str | None]] = []

    def release(self) -> None:
        RecordingGraphs.seen.append((self.graphs, self.fallback))
        super().release()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="runs per stage and mode; the last is reported")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("check_cuda_graphs: needs a CUDA GPU (graphs are CUDA-only; the CPU tests cover the bookkeeping)")
        return 2
    device, dtype = torch.device("cuda"), torch.bfloat16
    config = preset("official")
    pipeline_mod.GraphedVelocity = RecordingGraphs  # the pipeline builds its wrappers from this name
    pipe = pipeline_mod.Pipeline(config, _no_provider, device, dtype, keep_loaded=False)  # a wrapper per run
    s1 = config.stage1
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {dtype}; stage 1 {_describe(s1)}")
    failures = 0

    # Stage 1: the MoT geometry flow.
    flow = _network("ss_flow", config, args.seed, device, dtype)
    gen = torch.Generator(device).manual_seed(args.seed + 1)
    c1 = config.ss_condition
    cond = torch.randn(1, c1.num_tokens, c1.embed_dim, generator=gen, device=device).to(dtype)
    shapes = noise_lib.stage1_shapes(config.ss_flow.resolution, config.ss_flow.shape_channels)
    x0 = noise_lib.draw_stage1(shapes, gen, device)
    failures += _compare("stage 1", pipe, s1, args.repeats,
                         lambda progress: pipe.sample_geometry(flow, cond, x0, s1, progress))
    del flow
    failures += _check_decimation(args.repeats, device)
    return 1 if failures else 0


def _check_decimation(repeats: int, device: torch.device) -> int:
    """The decimation's rounds from graphs (`RepeatedCall`) against eager: the same mesh, and the time.

    The initial quadrics are made on the CPU for both runs: their float atomics are the only order-dependent sums
    on CUDA, and every later step is integer or element-wise, so the two results must be equal to the bit."""
    import numpy as np

    from engine.postprocess import collapse
    from engine.postprocess.cleanup import clean_mesh
    from engine.postprocess.procedural import noisy_sphere

    quadrics = collapse.vertex_quadrics
    collapse.vertex_quadrics = lambda p, f, b: quadrics(p.cpu(), f.cpu(), b.cpu()).to(p.device)
    try:
        mesh, _ = clean_mesh(noisy_sphere(1_000_000, seed=1))
        vertices = torch.from_numpy(mesh.vertices).to(device)
        faces = torch.from_numpy(mesh.faces.astype(np.int64)).to(device)
        out, times = {}, {True: [], False: []}
        for _ in range(repeats):
            for graphs in (False, True):
                torch.cuda.synchronize(device)
                start = time.perf_counter()
                out[graphs] = collapse.collapse_to_count(vertices, faces, 30_000, graphs=graphs)
                torch.cuda.synchronize(device)
                times[graphs].append(time.perf_counter() - start)
    finally:
        collapse.vertex_quadrics = quadrics
    same = all(torch.equal(a, b) for a, b in zip(out[True], out[False]))
    print(f"decimation {faces.shape[0]} -> {out[True][1].shape[0]} faces: eager {times[False][-1]:.3f} s, rounds from "
          f"graphs {times[True][-1]:.3f} s; the same vertices and faces: {same}")
    return 0 if same else 1


def _compare(stage: str, pipe, settings: SamplerSettings, repeats: int, run: Callable[[Any], Any]) -> int:
    """Eager and graph runs of one stage; prints times, memory and differences; returns 1 if graphs were not used."""
    guided = _guided_steps(settings)
    outputs: dict[str, list] = {"eager": [], "graphs": []}
    for mode in ("eager", "graphs"):
        pipe.cuda_graphs = mode == "graphs"
        runs = repeats + (mode == "eager")  # one more eager run: the process's own warm-up
        for r in range(runs):
            RecordingGraphs.seen.clear()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out, wall, steps, peaks = _timed(run)
            outputs[mode].append(out)
            if r == runs - 1:
                print(f"\n{stage}, {mode}: wall {wall * 1e3:.1f} ms; peak allocated {peaks[0]:.2f} GiB, reserved "
                      f"{peaks[1]:.2f} GiB")
                print("  steps ms: " + " ".join(f"{s:.1f}{'g' if g else ''}" for s, g in zip(steps, guided)))
                for label, flag in (("guided", True), ("unguided", False)):
                    chosen = [s for s, g in zip(steps, guided) if g == flag][3:]
                    if chosen:
                        print(f"  {label} steps past the first 3: median {statistics.median(chosen):.2f} ms "
                              f"(min {min(chosen):.2f}, max {max(chosen):.2f}, n {len(chosen)})")
                if mode == "graphs":
                    print(f"  wrappers (graphs held, fallback): {RecordingGraphs.seen}")
            for w in caught:
                print(f"  WARNING: {w.message}")
    floor = _difference(outputs["eager"][-1], outputs["eager"][-2])
    diff = _difference(outputs["graphs"][-1], outputs["eager"][-1])
    again = _difference(outputs["graphs"][-1], outputs["graphs"][-2]) if repeats > 1 else {}
    print(f"  relative difference max|a-b|/max|b|: graphs vs eager {_fmt(diff)}; eager vs eager {_fmt(floor)}"
          + (f"; graphs vs graphs {_fmt(again)}" if again else ""))
    used = RecordingGraphs.seen and all(n > 0 and why is None for n, why in RecordingGraphs.seen)
    if not used:
        print(f"  FAILED: {stage} did not run from graphs")
    return 0 if used else 1


def _timed(run: Callable[[Any], Any]) -> tuple[Any, float, list[float], tuple[float, float]]:
    events: list[torch.cuda.Event] = []

    def progress(done: int, total: int, x: Any) -> None:
        events.append(torch.cuda.Event(enable_timing=True))
        events[-1].record()

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.Event(enable_timing=True)
    start.record()
    t = time.perf_counter()
    out = run(progress)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    steps = [a.elapsed_time(b) for a, b in zip([start] + events, events)]
    peaks = (torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB)
    return out, wall, steps, peaks


def _network(name: str, config, seed: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """bench_pipeline.HostWeights' network (same seed rule, drawn on the device) in the compute dtype."""
    with torch.device(device), torch.no_grad():
        module = build(name, config)
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
        randomize_(module, seed * 1000 + MODEL_NAMES.index(name))
    return module.to(dtype).eval().requires_grad_(False)


def _guided_steps(settings: SamplerSettings) -> list[bool]:
    """Which steps `sampling.sample` guides (its rule, t in float32 units of time_scale)."""
    guidance = 0.0 if settings.shortcut else settings.cfg_strength
    lo, hi = settings.cfg_interval
    grid = time_grid(settings.steps, settings.rescale_t)
    ts = [float(torch.tensor(settings.time_scale * g, dtype=torch.float32)) for g in grid[:-1]]
    return [guidance != 0 and lo <= t <= hi for t in ts]


def _difference(a: Any, b: Any) -> dict[str, float]:
    pairs = {k: (a[k], b[k]) for k in b} if isinstance(b, dict) else {"x": (a, b)}
    return {k: float((x.double() - y.double()).abs().max() / y.double().abs().max().clamp_min(1e-30))
            for k, (x, y) in pairs.items()}


def _fmt(diff: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in diff.items())


def _describe(s: SamplerSettings) -> str:
    guided = sum(_guided_steps(s))
    return f"{s.steps} steps ({guided} guided, cfg {s.cfg_strength})"


def _no_provider(name: str) -> dict:
    raise RuntimeError(f"check_cuda_graphs builds its own networks; nothing should load {name}")


if __name__ == "__main__":
    sys.exit(main())
