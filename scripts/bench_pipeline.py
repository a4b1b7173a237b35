#!/usr/bin/env python3
"""Benchmark one object through the whole pipeline: wall time, peak device memory and FLOPs per stage.

    python scripts/bench_pipeline.py                                   # official config, CUDA, bf16
    python scripts/bench_pipeline.py --voxels 25000 42000 --json out.json
    python scripts/bench_pipeline.py --preset tiny --device cpu --quality fast --voxels 1000 --repeats 1 \
        --loading keep --no-api-check                                  # CPU smoke run (well under a minute)

What runs. Seeded random weights (the rule of `engine/random_weights.py`, drawn on the device for speed, so the
values differ from `--weights random`), one object of a synthetic picture (640x480, an elliptic mask, a pointmap
of a bump on a wall), default quality (`--quality`): stage 1 = 25 steps with guidance 7 (44 network rows),
stage 2 = 25 steps with guidance 1 (38 rows). The stages are driven here step by step as `engine/pipeline.py` runs
them (same functions, same order, same host copies), with two things fixed so that random weights give a
realistic workload:

* Voxels. The SS decoder runs on the stage-1 latent as usual (timed, with its occupancy, pruning and cap), but
  stage 2 and both decoders then run on a FIXED voxel set of about `--voxels` voxels at 64^3: the pruned surface
  (what `keep_surface` keeps) of an ellipsoid with axes 1 : 0.9 : 0.8 filling the grid; above the ~14k voxels
  of its outer surface the ellipsoid gets concentric hollow walls (cos(2 pi q (1 - r)) > 0, q chosen to match
  the count), like a thick-walled hollow object. The exact count is reported.
* Mesh SDF. FlexiCubes runs on the mesh decoder's output with its 8 SDF channels replaced by the analytic
  signed distance of that same shape, its surface moved half a voxel (of the 64^3 grid) into the solid, to the
  middle of the voxel band as a trained decoder puts it (`ShellShape.with_sdf`; `--mesh-sdf network` keeps the
  random network's SDF, whose random signs make almost every cell a surface cell: a worst case, not a realistic
  one).

Then, as the pipeline does by default, the mesh is post-processed (`make_artist_mesh`: clean-up, decimation to
`--faces`, UV unwrap, a `--texture-size` texture baked from the mesh and the Gaussians; `--faces 0` skips it).
The flows' sampler steps run through the pipeline's own `sample_geometry` / `sample_texture`, so CUDA graphs
(`--cuda-graphs`) and the compiled element-wise code (`--compile`, first run of a process includes compilation)
apply as they do for users. `--memory-cap-gib 8` caps the process's GPU memory to check that a run fits a card.

Timing: `torch.cuda.synchronize()` before and after every timed region; every configuration runs `--repeats`
times (default 2: one warm-up) and the last run is reported. Memory: `torch.cuda.max_memory_allocated()`,
reset at the start of every stage, in two loading modes: `keep` (all networks loaded up front, their weights
count in every stage; one pipeline serves all runs, as the worker keeps it between jobs, so later runs find the
networks loaded and the graphs of stage 1, the condition embedders and the decimation's rounds captured) and
`staged` (each network loaded right before its stage and freed after it, as `keep_loaded=False` does; loading is
timed and measured as its own row). Weights are served from host memory (as a memory-mapped checkpoint would be
once in the page cache), so load times exclude disk reads.

FLOPs are counted analytically from the configs (see "FLOP counting" below): the multiply-adds (x2) of every
matrix product the stage must do (linear layers, attention QK^T and PV, convolutions), nothing for
element-wise work, norms, sorting or FlexiCubes; the unconditional rows' cross-attention is a per-block constant,
not work (the JSON's flops.all_rows keeps the count that includes it). Achieved TFLOP/s is FLOPs / wall time; it is compared with
the machine's matrix-product rate measured here (an n x n x n product in the run's dtype, n = 8192 on CUDA).

Flow study (`--flow-study DIR`, before the pipeline runs): single velocity calls of both flows timed per
attention-kernel preference and from a captured CUDA graph, checked against float32, profiled with torch.profiler
(kernel time by kind; tables in DIR), and the same calls of an earlier engine copy (`--reference-engine`) for a
same-session before/after; plus SDPA and the q/k RMS norm alone on the flows' shapes. Each stage row also
records the process CPU seconds (all threads: shows multi-threaded host work such as loading; a synchronising
wait spins, so a GPU stage reads about its wall time) and the SM clock at its end.

Output: a markdown table on stdout and, with `--json OUT`, everything in machine-readable form.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from engine import frames  # noqa: E402
from engine import noise as noise_lib  # noqa: E402
from engine.assets import Mesh  # noqa: E402
from engine.random_weights import randomize_  # noqa: E402
from engine.config import MODEL_NAMES, PipelineConfig, preset, samplers_for  # noqa: E402
from engine.flexicubes import CORNER_OFFSETS  # noqa: E402
from engine.images import to_mask, to_rgb_float  # noqa: E402
from engine.mesh_extraction import CHANNELS, SUBDIVISION, decoded_to_mesh  # noqa: E402
from engine.model_store import ModelStore, build  # noqa: E402
from engine.models import fused  # noqa: E402
from engine.models.attention import attention_kernels  # noqa: E402
from engine.models.slat_flow import SlatVelocity  # noqa: E402
from engine.occupancy import cap_voxel_count, coords_from_logits, keep_surface  # noqa: E402
from engine.pipeline import Pipeline  # noqa: E402
from engine.postprocess import make_artist_mesh  # noqa: E402
from engine.pose import decode_pose  # noqa: E402
from engine.preprocess import full_image, preprocess_object  # noqa: E402
from engine.sampling import SamplerSettings, sample, time_grid  # noqa: E402
from engine.sparse.tensor import SparseTensor  # noqa: E402
from engine.weights.sources import RANDOM_OCCUPANCY  # noqa: E402

GIB = 1024**3

# Rows of the table, in run order: (key, label, counted in the end-to-end total)
STAGES = (
    ("preprocess", "preprocess (CPU: crop, resize, pointmap normalisation)", True),
    ("condition_1", "conditioning, stage 1 (DINO x4 + pointmap embedder + fuser)", True),
    ("stage_1", "stage 1: geometry flow (MoT, {stage_1})", True),
    ("ss_decode", "SS decode (64^3 occupancy, pruning, cap, pose)", True),
    ("condition_2", "conditioning, stage 2 (DINO x4 + fuser)", True),
    ("stage_2", "stage 2: SLAT flow ({stage_2})", True),
    ("gaussians", "Gaussian decode (+ copy to host)", True),
    ("mesh_net", "mesh decoder network (to 256^3)", True),
    ("flexicubes", "FlexiCubes + mesh to host", True),
    ("postprocess", "postprocess (clean-up, decimate, unwrap, bake: {postprocess})", True),
)
STAGE_MODELS = {
    "condition_1": "ss_condition", "stage_1": "ss_flow", "ss_decode": "ss_decoder", "condition_2": "slat_condition",
    "stage_2": "slat_flow", "gaussians": "gs_decoder", "mesh_net": "mesh_decoder",
}  # fmt: skip


# ---- the benchmark --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    dtype = _dtype(args.dtype, device)
    torch.manual_seed(args.seed)
    config = preset(args.preset)
    report: dict[str, Any] = {
        "machine": machine_info(device),
        "preset": args.preset,
        "dtype": str(dtype).replace("torch.", ""),
        "seed": args.seed,
        "repeats": args.repeats,
        "mesh_sdf": args.mesh_sdf,
        "quality": args.quality,
        "fixed": "stage 2 and decoders run on a fixed ellipsoid-shell voxel set; FlexiCubes on its analytic SDF"
        if args.mesh_sdf == "ellipsoid" else "stage 2 and decoders run on a fixed ellipsoid-shell voxel set",
        "configs": [],
        "errors": [],
        "skipped": [],
    }
    log(f"machine: {report['machine']}")
    if args.memory_cap_gib is not None and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2**30 / total))
        report["memory_cap_gib"] = args.memory_cap_gib
        log(f"GPU memory capped at {args.memory_cap_gib} GiB")
    report["cuda_graphs"] = args.cuda_graphs
    fused.ENABLED = args.compile == "on"
    report["compile"] = args.compile
    report["postprocess"] = f"{args.faces} faces, {args.texture_size}^2 texture" if args.faces else "off"

    # 1. The machine's matrix-product rate in the run's dtype.
    report["matmul"] = matmul_rate(device, dtype)
    log(f"matmul rate: {report['matmul']['tflops']:.3f} TFLOP/s ({report['matmul']['what']})")

    # 2. Weights (generated once, served from host memory) and the synthetic scene.
    t = time.perf_counter()
    provider = HostWeights(config, args.seed, device)
    for name in MODEL_NAMES:
        provider(name)
    report["weights_generation_s"] = time.perf_counter() - t
    report["parameters"] = provider.parameter_counts
    log(f"random weights: {sum(provider.parameter_counts.values()) / 1e9:.3f} G parameters "
        f"in {report['weights_generation_s']:.1f} s")
    scene = synthetic_scene()

    if args.flow_study is not None:
        report["flow_study"] = attempt_study(config, provider, device, dtype, args)
        write_json(args.json, report)

    # 3. Every voxel count x loading mode, `repeats` times each; the last run counts.
    modes = ("keep", "staged") if args.loading == "both" else (args.loading,)
    for target in args.voxels:
        shape = ShellShape.fit(target, config.slat_flow.resolution, device)
        stats = voxel_stats(shape.coords, config)
        flops = count_flops(config, stats, args.quality)
        entry: dict[str, Any] = {"target_voxels": target, "shape": shape.describe(), "voxel_stats": stats,
                                 "flops": flops, "modes": {}}
        report["configs"].append(entry)
        log(f"voxel set: {shape.describe()}; stats {stats}")
        for mode in modes:
            if time.perf_counter() - started > args.budget_s:
                report["skipped"].append(f"{target} voxels, {mode} loading: over --budget-s {args.budget_s}")
                log(f"SKIPPED {target}/{mode}: over budget")
                continue
            runs = []
            # Keep-loaded: one pipeline for all runs, as the worker keeps it between jobs (networks loaded once,
            # stage 1's graphs kept); staged: a fresh one per run, loading every network for every object.
            shared = make_pipeline(config, provider, device, dtype, mode, args) if mode == "keep" else None
            for r in range(args.repeats):
                pipe = shared or make_pipeline(config, provider, device, dtype, mode, args)
                result = run_object(pipe, config, device, mode, scene, shape, args,
                                    last=shared is None or r == args.repeats - 1)
                runs.append(result)
                log(f"{target} voxels, {mode}, run {r + 1}/{args.repeats}: {result['total_s']:.3f} s, "
                    f"peak {result['peak_gib']:.2f} GiB" + (f", ERRORS {result['errors']}" if result["errors"] else "")
                    + f"; {run_breakdown(result)}")
                seen = {e.splitlines()[0] for e in report["errors"]}
                report["errors"].extend(e for e in result["errors"] if e.splitlines()[0] not in seen)
            if shared is not None:  # the networks were loaded in the first run: report that loading
                first, last = runs[0], runs[-1]
                last["stages"].setdefault("load:all", first["stages"].get("load:all", {}))
                last["load_s"], last["peak_load_gib"] = first["load_s"], first["peak_load_gib"]
            entry["modes"][mode] = {"reported": runs[-1], "all_totals_s": [x["total_s"] for x in runs],
                                    "all_stages_s": [{k: v.get("seconds") for k, v in x["stages"].items()} for x in runs]}
            write_json(args.json, report)

    # 4. The public API once, end to end (random occupancy, whatever the random SS decoder gives).
    if args.api_check and time.perf_counter() - started <= args.budget_s:
        report["api_check"] = api_check(config, provider, device, dtype, scene, args.seed, args.quality, args)
        log(f"api check: {report['api_check']}")
    elif args.api_check:
        report["skipped"].append("api check: over budget")

    report["bench_wall_s"] = time.perf_counter() - started
    write_json(args.json, report)
    print(render_markdown(report))
    return 1 if report["errors"] else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, float32 on CPU), bf16, fp16, float32")
    p.add_argument("--preset", default="official", choices=("official", "tiny"))
    p.add_argument("--voxels", type=int, nargs="+", default=[25000], help="fixed voxel counts for stage 2/decoders")
    p.add_argument("--loading", default="both", choices=("keep", "staged", "both"),
                   help="keep: every network loaded up front; staged: load before, free after each stage")
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration; the last is reported")
    p.add_argument("--quality", default="default", help="sampler preset (engine.config.QUALITIES); smoke: fast")
    p.add_argument("--mesh-sdf", default="ellipsoid", choices=("ellipsoid", "network"))
    p.add_argument("--no-api-check", dest="api_check", action="store_false",
                   help="skip the one end-to-end Pipeline.reconstruct call")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip configurations that would start after this")
    p.add_argument("--attention", default="engine",
                   help="attention kernels the flows prefer: 'engine' (pipeline.FLOW_ATTENTION_KERNELS), 'torch' "
                        "(PyTorch's default order) or a comma list of cudnn, flash, efficient, math")
    p.add_argument("--flow-study", type=Path, default=None,
                   help="before the pipeline runs: time, check and profile single velocity calls of both flows "
                        "(see flow_study) and write the profiler tables into this folder")
    p.add_argument("--reference-engine", type=Path, default=None,
                   help="a copy of an earlier engine package (folder named like the package) whose flows the study "
                        "times and compares against, e.g. out/speed_ref/engine_head from `git archive`")
    p.add_argument("--cuda-graphs", default="on", choices=("on", "off"),
                   help="replay the flows' sampler steps from CUDA graphs (the pipeline's default on CUDA)")
    p.add_argument("--compile", default="on", choices=("on", "off"),
                   help="the flows' fused element-wise code compiled (engine.models.fused; on by default on CUDA)")
    p.add_argument("--faces", type=int, default=30000, help="postprocess: target face count (0: no postprocess)")
    p.add_argument("--texture-size", type=int, default=2048, help="postprocess: texture side, px")
    p.add_argument("--memory-cap-gib", type=float, default=None,
                   help="cap this process's GPU memory (torch.cuda.set_per_process_memory_fraction) to check that "
                        "a run fits a smaller card")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    return p.parse_args(argv)


@dataclass
class Recorder:
    """Per-stage wall time (synchronised) and peak allocated device memory (reset per stage)."""

    device: torch.device
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @contextmanager
    def __call__(self, key: str):
        sync(self.device)
        start_gib = allocated_gib(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t, cpu = time.perf_counter(), time.process_time()
        yield
        sync(self.device)
        row = self.stages.setdefault(key, {"seconds": 0.0, "peak_gib": 0.0, "start_gib": start_gib, "cpu_s": 0.0})
        row["seconds"] += time.perf_counter() - t
        row["cpu_s"] += time.process_time() - cpu  # all threads; synchronising spin-waits, so >= seconds
        row["sm_clock_mhz"] = sm_clock(self.device)
        row["peak_gib"] = max(row["peak_gib"], peak_gib(self.device))
        row["end_gib"] = allocated_gib(self.device)


def make_pipeline(config: PipelineConfig, provider: HostWeights, device: torch.device, dtype: torch.dtype, mode: str,
                  args: argparse.Namespace) -> Pipeline:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Pipeline(config, provider, device, dtype, keep_loaded=(mode == "keep"), cuda_graphs=args.cuda_graphs == "on")


def run_object(
    pipe: Pipeline,
    config: PipelineConfig,
    device: torch.device,
    mode: str,
    scene: dict[str, np.ndarray],
    shape: ShellShape,
    args: argparse.Namespace,
    last: bool = True,
) -> dict[str, Any]:
    """One object through every stage, as `Pipeline.reconstruct` runs it (see its `_stage1` ... `_decode`).

    The networks are loaded on first use (keep) or per stage (staged); `last`: free them all at the end."""
    dtype = pipe.dtype
    if device.type == "cuda":
        torch.cuda.empty_cache()
    store = pipe.models
    kernels = flow_kernels(args, pipe)
    rec = Recorder(device)
    errors: list[str] = []
    checks: dict[str, Any] = {}
    gen = torch.Generator(device).manual_seed(args.seed)
    stage1_settings, stage2_settings = samplers_for(config, args.quality)

    def load(key: str) -> None:
        name = STAGE_MODELS[key]
        if mode == "staged":
            with rec(f"load:{key}"):
                store.get(name)

    if mode == "keep" and not all(name in store.loaded for name in MODEL_NAMES):
        with rec("load:all"):
            for name in MODEL_NAMES:
                store.get(name)

    def to_dev(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, dtype)

    def attempt(key: str, fn: Callable[[], Any], fallback: Callable[[], Any] | None = None) -> Any:
        """Run one stage; on failure record the traceback and go on with `fallback()` (a stand-in input for the
        next stages, noted in checks) so one broken stage does not hide the measurements of the others."""
        try:
            return fn()
        except Exception as exc:
            errors.append(f"{mode}/{key}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            rec.stages.pop(key, None)
            if key in STAGE_MODELS:
                store.done_with(STAGE_MODELS[key])  # staged mode: free what the failed stage loaded
            if fallback is None:
                return None
            checks[f"{key}_stand_in"] = True
            return fallback()

    def staged(key: str, body: Callable[[Any], Any]) -> Callable[[], Any]:
        """load (staged mode) -> timed body(model) -> done_with, for the stage `key`."""

        def run() -> Any:
            name = STAGE_MODELS[key]
            load(key)
            with rec(key):
                out = body(store.get(name))
            store.done_with(name)
            return out

        return run

    # Preprocessing on the host, as the pipeline's _prepare does.
    def preprocess() -> Any:
        with rec("preprocess"):
            rgb = to_rgb_float(scene["image"])
            mask = to_mask(scene["mask"], rgb.shape[:2], name="mask 1")
            points = frames.opengl_to_p3d(scene["pointmap"].astype(np.float32))
            rgb_t = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
            points_t = torch.from_numpy(np.ascontiguousarray(points)).permute(2, 0, 1).float()
            return preprocess_object(rgb_t, torch.from_numpy(mask), points_t, config.preprocess,
                                     full_image(rgb_t, config.preprocess))

    try:
        inputs = preprocess()
        c1 = config.ss_condition
        embed_1 = staged("condition_1", lambda m: _condition(pipe, "ss_condition", m, inputs.ss, to_dev))
        cond1 = attempt("condition_1", embed_1,
                        lambda: torch.randn(1, c1.num_tokens, c1.embed_dim, device=device, dtype=dtype))
        stage1 = attempt(
            "stage_1", staged("stage_1", lambda m: _geometry(pipe, m, cond1, config, stage1_settings, gen, device)),
            lambda: noise_lib.draw_stage1(
                noise_lib.stage1_shapes(config.ss_flow.resolution, config.ss_flow.shape_channels),
                torch.Generator().manual_seed(args.seed), torch.device("cpu")),
        )
        checks["stage1_finite"] = all(bool(torch.isfinite(v).all()) for v in stage1.values())
        del cond1
        voxels = attempt("ss_decode", staged("ss_decode", lambda m: _voxels(m, stage1, inputs, config, gen, device,
                                                                             dtype)))
        if voxels is not None:
            checks["model_voxels"] = int(voxels[0].shape[0])  # what the random SS decoder gave (then replaced)
            checks["pose_finite"] = bool(np.isfinite(voxels[1].object_to_camera().numpy()).all())

        # Stage 2 on the fixed voxel set.
        coords = shape.coords.to(device)
        c2 = config.slat_condition
        embed_2 = staged("condition_2", lambda m: _condition(pipe, "slat_condition", m, inputs.slat, to_dev))
        cond2 = attempt("condition_2", embed_2,
                        lambda: torch.randn(1, c2.num_tokens, c2.embed_dim, device=device, dtype=dtype))
        slat = attempt(
            "stage_2", staged("stage_2", lambda m: _texture(pipe, m, cond2, coords, config, stage2_settings, gen, device)),
            lambda: torch.randn(coords.shape[0], config.slat_flow.out_channels, device=device),
        )
        checks["slat_finite"] = bool(torch.isfinite(slat).all())
        del cond2

        # Decoders.
        latent = SparseTensor(coords, slat.to(dtype))
        gaussians = attempt("gaussians", staged("gaussians", lambda m: m.decode(latent).to_assets()[0]))
        if gaussians is not None:
            checks["gaussians"] = len(gaussians)
            checks["gaussians_finite"] = bool(np.isfinite(gaussians.xyz).all() and np.isfinite(gaussians.colors).all())
        decoded = attempt("mesh_net", staged("mesh_net", lambda m: m(latent)))
        if decoded is not None:
            checks["fine_voxels"] = decoded.num_voxels
            checks["decoded_finite"] = bool(torch.isfinite(decoded.feats).all())
            resolution = config.mesh_decoder.trunk.resolution * SUBDIVISION
            if args.mesh_sdf == "ellipsoid":
                decoded = decoded.replace(shape.with_sdf(decoded.coords, decoded.feats, resolution))  # untimed

            def extract() -> Mesh:
                with rec("flexicubes"):
                    surface = decoded_to_mesh(decoded, resolution, seal_block=SUBDIVISION)  # as the pipeline
                    attrs = surface.vertex_attrs
                    return Mesh(
                        vertices=surface.vertices.float().cpu().numpy(),
                        faces=surface.faces.cpu().numpy().astype(np.int32),
                        vertex_colors=None if attrs is None else attrs[:, :3].float().cpu().numpy(),
                    )

            mesh = attempt("flexicubes", extract)
            if mesh is not None:
                checks["mesh_vertices"], checks["mesh_faces"] = len(mesh.vertices), len(mesh.faces)
            if mesh is not None and args.faces:

                starts: dict[str, float] = {}

                def step(stage: str, _fraction: float) -> None:
                    starts.setdefault(stage, time.perf_counter())

                def postprocess() -> Mesh:
                    with rec("postprocess"):  # as Pipeline._postprocess: the Gaussians' colours join the bake
                        out = make_artist_mesh(mesh, gaussians, args.faces, args.texture_size, progress=step,
                                               device=device, round_graphs=pipe.decimation_graphs())  # fmt: skip
                        sync(device)
                    ends = [*list(starts.values())[1:], time.perf_counter()]
                    checks["postprocess_steps_s"] = {k: round(e - t, 4) for (k, t), e in zip(starts.items(), ends)}
                    return out

                artist = attempt("postprocess", postprocess)
                if artist is not None:
                    checks["artist_faces"], checks["texture"] = len(artist.faces), artist.texture.shape[0]
        del decoded, latent, gaussians
    except Exception as exc:  # keep what was measured; report the failure with its traceback
        errors.append(f"{mode}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    finally:
        if last:
            store.release()

    stages = rec.stages
    total = sum(stages[k]["seconds"] for k, _, counted in STAGES if counted and k in stages)
    loads = {k: v for k, v in stages.items() if k.startswith("load:")}
    peak_compute = max((v["peak_gib"] for k, v in stages.items() if k not in loads), default=0.0)
    peak_load = max((v["peak_gib"] for v in loads.values()), default=0.0)
    return {
        "mode": mode,
        "stages": stages,
        "total_s": total,  # end to end, excluding model loading
        "load_s": sum(v["seconds"] for v in loads.values()),
        "peak_compute_gib": peak_compute,  # the stages themselves
        "peak_load_gib": peak_load,  # while loading (host -> device copy in float32, then the cast)
        # per object: keep-loaded loads once per session, staged loads every network for every run
        "peak_gib": peak_compute if mode == "keep" else max(peak_compute, peak_load),
        "checks": checks,
        "errors": errors,
        "flow_attention": list(kernels),
    }


def _condition(pipe: Pipeline, name: str, embedder: nn.Module, named: dict[str, torch.Tensor],
               to_dev: Callable) -> torch.Tensor:
    """Pipeline._stage1/_stage2 'condition': the full image's tokens first (shared by all objects), then the rest,
    through the pipeline's own `_embed` (kept graphs when everything stays loaded)."""
    embed = pipe._embed(name, embedder)
    shared = embed({"rgb_image": to_dev(named["rgb_image"])})
    raw = embed({k: to_dev(v) for k, v in named.items() if k != "rgb_image"})
    cond = embedder.fuse({**shared, **raw})  # (1, T, C)
    cond.float().cpu()  # the pipeline keeps a host copy for debugging
    return cond


def _geometry(pipe, flow, cond, config, settings, gen, device) -> dict[str, torch.Tensor]:
    """Pipeline._stage1 'geometry' for one object (its sampling run is the pipeline's own)."""
    shapes = noise_lib.stage1_shapes(config.ss_flow.resolution, config.ss_flow.shape_channels)
    x0 = {k: v.to(device) for k, v in noise_lib.draw_stage1(shapes, gen, device).items()}
    x1 = pipe.sample_geometry(flow, cond, x0, settings)
    return {k: v.float().cpu() for k, v in x1.items()}


def _voxels(decoder, stage1, inputs, config, gen, device, dtype):
    """Pipeline._voxels for one object: occupancy -> surface voxels (capped) and the decoded pose."""
    logits = decoder(stage1["shape"].to(device, dtype)).float()  # (1, 1, 64, 64, 64)
    coords = coords_from_logits(logits)
    logits.cpu(), coords.cpu()
    if config.prune_interior:
        coords = keep_surface(coords)
    coords, factor = cap_voxel_count(coords, generator=gen, max_coords=config.max_voxels)
    coords.cpu()
    pose_raw = {k: stage1[k] for k in ("6drotation_normalized", "translation", "scale")}
    return coords, decode_pose(pose_raw, inputs.pointmap_scale, inputs.pointmap_shift, factor)


def _texture(pipe, flow, cond, coords, config, settings, gen, device) -> torch.Tensor:
    """Pipeline._stage2 'texture' for one object: the SLAT flow on `coords`, de-normalised (N, 8)."""
    x0 = noise_lib.draw_stage2(coords.shape[0], config.slat_flow.in_channels, gen, device)
    x1 = pipe.sample_texture(flow, cond, coords, x0, settings)
    x1.float().cpu()
    mean = torch.tensor(config.slat_mean, device=device)
    std = torch.tensor(config.slat_std, device=device)
    slat = x1[0] * std + mean
    slat.cpu()
    return slat


def flow_kernels(args: argparse.Namespace, pipe: Pipeline) -> tuple[str, ...]:
    """The attention-kernel preference of the flow stages (see --attention); also set on `pipe`."""
    if args.attention == "torch":
        pipe.flow_attention = ()
    elif args.attention != "engine":
        pipe.flow_attention = tuple(a.strip() for a in args.attention.split(",") if a.strip())
    return pipe.flow_attention


def api_check(config, provider, device, dtype, scene, seed, quality, args) -> dict[str, Any]:
    """One `Pipeline.reconstruct` call through the public API (its own stage timings, random occupancy)."""
    try:
        pipe = Pipeline(config, provider, device, dtype, keep_loaded=True)
        flow_kernels(args, pipe)
        sync(device)
        t = time.perf_counter()
        result = pipe.reconstruct(scene["image"], [scene["mask"]], pointmap=scene["pointmap"], seed=seed,
                                  quality=quality, postprocess=None)  # post-processing: scripts/bench_postprocess.py
        sync(device)
        obj = result.objects[0]
        out = {
            "ok": True,
            "wall_s": time.perf_counter() - t,
            "timings_s": result.timings,
            "voxels": obj.num_voxels,
            "gaussians": len(obj.gaussians),
            "mesh_faces": len(obj.mesh.faces),
            "finite": bool(np.isfinite(obj.mesh.vertices).all() and np.isfinite(obj.gaussians.xyz).all()
                           and np.isfinite(obj.object_to_camera).all()),
        }
        pipe.models.release()
        return out
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


# ---- weights --------------------------------------------------------------------------------------------------


class HostWeights:
    """A weights provider: seeded random state dicts (official key names), generated once on `device` with the rule
    of `engine/random_weights.py` and kept in host memory, so a load is host -> device like a real checkpoint.

    The SS decoder's output bias is shifted like `engine/weights/sources.py` does, so that about
    RANDOM_OCCUPANCY of the grid is occupied for a standard-normal latent."""

    def __init__(self, config: PipelineConfig, seed: int, device: torch.device):
        self.config, self.seed, self.device = config, seed, device
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        self.parameter_counts: dict[str, int] = {}

    def __call__(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._cache:
            with torch.device(self.device), torch.no_grad():
                module = build(name, self.config)
                if hasattr(module, "reset_buffers"):
                    module.reset_buffers()
                randomize_(module, self.seed * 1000 + MODEL_NAMES.index(name))
                if name == "ss_decoder":
                    calibrate_occupancy(module, self.config, self.seed)
            self._cache[name] = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
            self.parameter_counts[name] = sum(p.numel() for p in module.parameters())
            del module
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return self._cache[name]


@torch.no_grad()
def calibrate_occupancy(decoder: nn.Module, config: PipelineConfig, seed: int) -> None:
    device = decoder.out_layer[-1].bias.device
    gen = torch.Generator(device).manual_seed(seed)
    r = config.ss_flow.resolution
    logits = decoder(torch.randn(1, r**3, config.ss_flow.shape_channels, generator=gen, device=device)).flatten()
    threshold = torch.quantile(logits[:: max(1, logits.numel() // 1_000_000)].float(), 1 - RANDOM_OCCUPANCY)
    decoder.out_layer[-1].bias -= threshold


# ---- the fixed voxel set --------------------------------------------------------------------------------------


@dataclass
class ShellShape:
    """Pruned surface voxels of an ellipsoid (axes 1 : 0.9 : 0.8 of `scale` x the grid), with concentric hollow walls
    when q > 0: inside = (r <= 1) and cos(2 pi q (1 - r)) > 0, r the ellipsoidal radius. Coordinates (N, 4) int32
    (batch 0, x, y, z), lexicographic, as `keep_surface` leaves them."""

    coords: torch.Tensor
    resolution: int
    scale: float
    q: float

    AXES = (1.0, 0.9, 0.8)
    BAND_MIDDLE = 0.5  # how far (in 64^3 voxels) `with_sdf` moves the surface into the solid

    @classmethod
    def fit(cls, target: int, resolution: int, device: torch.device) -> ShellShape:
        """The shape whose voxel count is nearest `target`: the plain surface, shrunk, when the full-size surface
        has more voxels than that; else the full-size ellipsoid with walls, q scanned upward (first within 2%)."""
        count = lambda s, q: cls.make(resolution, s, q, device).coords.shape[0]  # noqa: E731
        if count(1.0, 0.0) >= target:
            lo, hi = 0.02, 1.0
            for _ in range(30):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if count(mid, 0.0) < target else (lo, mid)
            return cls.make(resolution, hi, 0.0, device)
        best = None
        for q in np.arange(0.5, 12.0, 0.05):
            shape = cls.make(resolution, 1.0, float(q), device)
            error = abs(shape.coords.shape[0] - target) / target
            if best is None or error < best[0]:
                best = (error, shape)
            if error < 0.02:
                break
        return best[1]

    @classmethod
    def make(cls, resolution: int, scale: float, q: float, device: torch.device) -> ShellShape:
        axis = torch.arange(resolution, device=device, dtype=torch.float32) + 0.5  # voxel centres
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # (R, R, R, 3)
        inside = cls._value(grid, resolution, scale, q) < 0
        solid = torch.nonzero(inside).to(torch.int32)  # (N, 3) lexicographic
        coords = torch.cat([torch.zeros_like(solid[:, :1]), solid], dim=1)  # (N, 4)
        return cls(keep_surface(coords), resolution, scale, q)

    @classmethod
    def _value(cls, points: torch.Tensor, resolution: int, scale: float, q: float) -> torch.Tensor:
        """Signed value (< 0 inside) at points (..., 3) in voxel units of the 64^3 grid; about a distance in units
        of the smallest semi-axis."""
        half = resolution / 2
        axes = torch.tensor(cls.AXES, device=points.device) * scale * (half - 0.5)
        r = ((points - half) / axes).norm(dim=-1)
        if q == 0:
            return r - 1
        return torch.maximum(r - 1, -torch.cos(2 * math.pi * q * (1 - r)) / (2 * math.pi * q))

    def with_sdf(self, coords: torch.Tensor, feats: torch.Tensor, resolution: int) -> torch.Tensor:
        """Mesh decoder output (M, 101) at `resolution` with its 8 corner SDF channels set to this shape's value.

        The surface is moved `BAND_MIDDLE` of a 64^3 voxel into the solid, and the official SDF bias (-1 / resolution,
        which `features_to_mesh` adds) is cancelled. The voxel set is the solid's outer layer, so the shape's own
        boundary runs along the band's outer faces, where the lattice points no voxel touches count as outside:
        FlexiCubes then clamped the surface to the voxel faces (terraces a 64^3 voxel high; after decimation to 30k
        faces a median dihedral angle of 35 degrees, 4,214 xatlas charts and 0.72 s of unwrap against 2 degrees,
        ~300 charts and 0.18 s for a smooth surface of that size). A trained decoder's surface runs inside its
        voxels (the SS voxels are those the surface crosses), which the band's middle imitates.
        """
        start, stop = CHANNELS["sdf"]
        corners = torch.tensor(CORNER_OFFSETS, device=coords.device, dtype=torch.float32)  # (8, 3)
        points = (coords[:, None, 1:].float() + corners) * (self.resolution / resolution)  # (M, 8, 3) grid units
        axes_min = min(self.AXES) * self.scale * (self.resolution / 2 - 0.5) / self.resolution
        sdf = self._value(points, self.resolution, self.scale, self.q) * axes_min  # ~ object units
        sdf = sdf + self.BAND_MIDDLE / self.resolution + 1.0 / resolution  # into the band; the bias cancelled
        out = feats.clone()
        out[:, start:stop] = sdf.to(out.dtype)
        return out

    def describe(self) -> str:
        n = self.coords.shape[0]
        if self.q == 0:
            return (f"{n} voxels: surface of a solid ellipsoid 1:0.9:0.8 at {self.scale:.3f} x the "
                    f"{self.resolution}^3 grid")
        return (f"{n} voxels: ellipsoid 1:0.9:0.8 filling the {self.resolution}^3 grid with concentric hollow walls "
                f"(q = {self.q:.2f}), pruned to its surfaces")


def voxel_stats(coords: torch.Tensor, config: PipelineConfig) -> dict[str, int]:
    """Counts the FLOP formulas need: voxels at every resolution, neighbour pairs of every 3^3 sparse conv,
    and the sum over attention windows of (voxels in the window)^2 for both window shifts of the decoders."""
    xyz = coords[:, 1:].long()
    coarse = torch.unique(torch.div(xyz, config.slat_flow.patch_size, rounding_mode="floor"), dim=0)
    children = torch.tensor(CORNER_OFFSETS, device=xyz.device)  # any order of the 8 children
    fine2 = (xyz[:, None] * 2 + children).reshape(-1, 3)
    fine4 = (fine2[:, None] * 2 + children).reshape(-1, 3)
    w = config.gs_decoder.trunk.window_size
    stats = {
        "N": xyz.shape[0],
        "M": coarse.shape[0],
        "pairs_N": neighbour_pairs(xyz),
        "pairs_M": neighbour_pairs(coarse),
        "N_2x": fine2.shape[0],
        "pairs_2x": neighbour_pairs(fine2),
        "N_4x": fine4.shape[0],
        "pairs_4x": neighbour_pairs(fine4),
    }
    for shift in (0, w // 2):
        _, counts = torch.unique(torch.div(xyz + shift, w, rounding_mode="floor"), dim=0, return_counts=True)
        stats[f"window_sq_shift{shift}"] = int((counts.long() ** 2).sum())
        stats[f"windows_shift{shift}"] = int(counts.numel())
    return stats


def neighbour_pairs(xyz: torch.Tensor) -> int:
    """Pairs (p, p + o) with both voxels present, over the 27 offsets o of a 3^3 kernel (the centre included)."""
    xyz = xyz.long() + 1
    extent = int(xyz.max()) + 2
    keys = (xyz[:, 0] * extent + xyz[:, 1]) * extent + xyz[:, 2]
    sorted_keys = torch.sort(keys).values
    total = 0
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                query = keys + (dx * extent + dy) * extent + dz
                pos = torch.searchsorted(sorted_keys, query).clamp_(max=keys.numel() - 1)
                total += int((sorted_keys[pos] == query).sum())
    return total


# ---- FLOP counting --------------------------------------------------------------------------------------------
#
# FLOPs = 2 x multiply-adds of the matrix products a stage must do, at batch rows actually run:
#   linear(rows, cin, cout) = 2 rows cin cout;  attention over L queries and S keys, C = heads x head dim:
#   QK^T + PV = 4 L S C (no padding, no masked slots);  dense 3^3 conv = 2 voxels 27 cin cout (zero padding
#   counted, as cuDNN does it);  sparse (submanifold) 3^3 conv = 2 pairs cin cout, pairs = occupied neighbour
#   pairs incl. the centre (see `neighbour_pairs`);  1x1 sparse conv = linear.
# Sampler rows: a guided step runs the network on 2 rows (conditional + unconditional), an unguided step on 1.
# The cross-attention of an unconditional row (all-zero condition) is a per-block constant, so it is not work the
# stage must do: queries, attention and output projection are counted for the conditional row of every step only,
# and the condition keys/values once per run for that one row ("all_rows" keeps the count of the version that did
# compute them: every row, keys/values for 1 + 2 rows). Not counted: norms, activations, embeddings' sin/cos,
# resampling gathers, sorting, FlexiCubes (no matrix work).


def linear(rows: int, cin: int, cout: int) -> int:
    return 2 * rows * cin * cout


def attention_flops(queries: int, keys: int, channels: int) -> int:
    return 4 * queries * keys * channels


def sampler_rows(settings: SamplerSettings) -> int:
    """Network rows over a sampling run (mirrors engine.sampling.sample's guidance rule); settings.steps of them
    are conditional rows."""
    guidance = 0.0 if settings.shortcut else settings.cfg_strength
    lo, hi = settings.cfg_interval
    grid = time_grid(settings.steps, settings.rescale_t)
    rows = 0
    for k in range(settings.steps):
        t_net = float(torch.tensor(settings.time_scale * grid[k], dtype=torch.float32))
        rows += 2 if guidance != 0 and lo <= t_net <= hi else 1
    return rows


def count_flops(config: PipelineConfig, stats: dict[str, int], quality: str = "default") -> dict[str, Any]:
    s1, s2 = samplers_for(config, quality)
    rows1, rows2 = sampler_rows(s1), sampler_rows(s2)
    return {
        "samplers": {"stage_1": describe_sampler(s1, rows1), "stage_2": describe_sampler(s2, rows2)},
        "condition_1": condition_flops(config.ss_condition),
        "stage_1": ss_flow_flops(config, rows1, s1.steps),
        "ss_decode": ss_decoder_flops(config.ss_decoder),
        "condition_2": condition_flops(config.slat_condition),
        "stage_2": slat_flow_flops(config, stats, rows2, s2.steps),
        "gaussians": trunk_flops(config.gs_decoder.trunk, stats)
        + linear(stats["N"], config.gs_decoder.trunk.model_channels, config.gs_decoder.out_channels),
        "mesh_net": mesh_decoder_flops(config, stats),
        "flexicubes": 0,
        "rows": {"stage_1": rows1, "stage_2": rows2},
        "stage_2_transformer_per_row": slat_transformer_flops(config, stats["M"]),
        "all_rows": {"stage_1": ss_flow_flops(config, rows1, rows1, 3),
                     "stage_2": slat_flow_flops(config, stats, rows2, rows2, 3)},
    }


def describe_sampler(settings: SamplerSettings, rows: int) -> str:
    mode = "shortcut" if settings.shortcut else f"CFG {settings.cfg_strength:g}"
    return f"{settings.steps} steps, {mode}: {rows} rows"


def dino_flops(cfg) -> int:
    """One image through DINOv2 (patch conv + blocks over cls + registers + patches)."""
    c, t = cfg.embed_dim, 1 + cfg.num_register_tokens + cfg.grid_size**2
    hidden = int(c * cfg.mlp_ratio)
    per_block = linear(t, c, 3 * c) + attention_flops(t, t, c) + linear(t, c, c) + linear(t, c, hidden) * 2
    return linear(cfg.grid_size**2, 3 * cfg.patch_size**2, c) + cfg.depth * per_block


def point_embed_flops(cfg) -> int:
    """One pointmap: per-pixel projection, then one ViT block inside every window of P^2 pixels + cls."""
    c, windows, length = cfg.embed_dim, cfg.grid_size**2, 1 + cfg.patch_size**2
    rows, hidden = windows * length, int(c * cfg.mlp_ratio)
    block = linear(rows, c, 3 * c) + windows * attention_flops(length, length, c) + linear(rows, c, c)
    return linear(cfg.input_size**2, 3, c) + block + linear(rows, c, hidden) * 2


def condition_flops(cfg) -> int:
    """Both DINOs on both of their inputs, the pointmap embedder on both pointmaps, SwiGLU projections of all
    tokens into the fused width."""
    dino_tokens = cfg.dino.num_slat_tokens if cfg.dino.prenorm_features else cfg.dino.num_ss_tokens
    total = 4 * dino_flops(cfg.dino)
    projected = [(cfg.dino.embed_dim, 2 * dino_tokens), (cfg.dino.embed_dim, 2 * dino_tokens)]
    if cfg.point is not None:
        total += 2 * point_embed_flops(cfg.point)
        projected.append((cfg.point.embed_dim, 2 * cfg.point.num_tokens))
    for dim, tokens in projected:
        total += 2 * linear(tokens, dim, cfg.hidden_dim) + linear(tokens, cfg.hidden_dim, cfg.embed_dim)
    return total


def ss_flow_flops(config: PipelineConfig, rows: int, cross_rows: int, kv_rows: int = 1) -> int:
    """`rows` network rows, of which `cross_rows` attend to the condition; keys/values for `kv_rows` rows."""
    cfg = config.ss_flow
    c, t = cfg.model_channels, config.ss_condition.num_tokens
    n, p = cfg.resolution**3, len(cfg.pose_channels)
    hidden = int(c * cfg.mlp_ratio)
    per_row = 2 * (linear(1, 256, c) + linear(1, c, c))  # t and d embedders
    per_row += linear(n, cfg.shape_channels, c) * 2 + sum(linear(1, ch, c) * 2 for ch in cfg.pose_channels)
    block, cross = linear(1, c, 6 * c), 0  # adaLN
    for length in (n, p):  # per stream: self qkv + out, MLP; cross q + out and cross-attention
        block += linear(length, c, 3 * c) + linear(length, c, c) + 2 * linear(length, c, hidden)
        cross += 2 * linear(length, c, c) + attention_flops(length, t, c)
    block += attention_flops(n, n, c) + attention_flops(p, p + n, c)  # shape <- shape, pose <- [pose; shape]
    kv = kv_rows * cfg.num_blocks * 2 * linear(t, cfg.cond_channels, 2 * c)  # both streams
    return rows * (per_row + cfg.num_blocks * block) + cross_rows * cfg.num_blocks * cross + kv


def ss_decoder_flops(cfg) -> int:
    def conv(side: int, cin: int, cout: int) -> int:
        return 2 * side**3 * 27 * cin * cout

    r, ch = cfg.resolution, cfg.channels
    total = conv(r, cfg.latent_channels, ch[0]) + cfg.num_res_blocks_middle * 2 * conv(r, ch[0], ch[0])
    side = r
    for i, c in enumerate(ch):
        total += cfg.num_res_blocks * 2 * conv(side, c, c)
        if i + 1 < len(ch):
            total += conv(side, c, 8 * ch[i + 1])
            side *= 2
    return total + conv(side, ch[-1], cfg.out_channels)


def slat_transformer_flops(config: PipelineConfig, m: int, cross: bool = True) -> int:
    """The 24 transformer blocks of the SLAT flow on M coarse tokens, one row (`cross`: with its cross-attention)."""
    cfg = config.slat_flow
    c, t, hidden = cfg.model_channels, config.slat_condition.num_tokens, int(cfg.model_channels * cfg.mlp_ratio)
    block = linear(1, c, 6 * c) + linear(m, c, 3 * c) + attention_flops(m, m, c) + linear(m, c, c)
    block += 2 * linear(m, c, hidden)
    if cross:
        block += 2 * linear(m, c, c) + attention_flops(m, t, c)
    return cfg.num_blocks * block


def slat_flow_flops(
    config: PipelineConfig, stats: dict[str, int], rows: int, cross_rows: int, kv_rows: int = 1
) -> int:
    """`rows` network rows, of which `cross_rows` attend to the condition; keys/values for `kv_rows` rows."""
    cfg = config.slat_flow
    if len(cfg.io_block_channels) != 1:
        raise NotImplementedError("FLOP counting assumes one I/O level (the official and tiny configs)")
    c, io, nres = cfg.model_channels, cfg.io_block_channels[0], cfg.num_io_res_blocks
    n, m, pn, pm = stats["N"], stats["M"], stats["pairs_N"], stats["pairs_M"]
    emb = lambda co: linear(1, c, 2 * co)  # noqa: E731
    per_row = linear(1, 256, c) + linear(1, c, c) + linear(n, cfg.in_channels, io)
    per_row += (nres - 1) * (2 * linear(pn, io, io) + emb(io))  # input res blocks at 64^3
    per_row += linear(pm, io, c) + linear(pm, c, c) + linear(m, io, c) + emb(c)  # down block, convs at 32^3
    per_row += slat_transformer_flops(config, m, cross=False)
    per_row += linear(pn, 2 * c, io) + linear(pn, io, io) + linear(n, 2 * c, io) + emb(io)  # up block at 64^3
    per_row += (nres - 1) * (linear(pn, 2 * io, io) + linear(pn, io, io) + linear(n, 2 * io, io) + emb(io))
    per_row += linear(n, io, cfg.out_channels)
    cross = slat_transformer_flops(config, m) - slat_transformer_flops(config, m, cross=False)
    kv = kv_rows * cfg.num_blocks * linear(config.slat_condition.num_tokens, cfg.cond_channels, 2 * c)
    return rows * per_row + cross_rows * cross + kv


def trunk_flops(cfg, stats: dict[str, int]) -> int:
    n, c, hidden = stats["N"], cfg.model_channels, int(cfg.model_channels * cfg.mlp_ratio)
    total = linear(n, cfg.latent_channels, c)
    for i in range(cfg.num_blocks):
        shift = (cfg.window_size // 2) * (i % 2)
        total += linear(n, c, 3 * c) + linear(n, c, c) + 2 * linear(n, c, hidden)
        total += 4 * stats[f"window_sq_shift{shift}"] * c  # QK^T + PV inside every window
    return total


def mesh_decoder_flops(config: PipelineConfig, stats: dict[str, int]) -> int:
    cfg = config.mesh_decoder
    c = cfg.trunk.model_channels
    c1, c2 = cfg.upsample_channels
    total = trunk_flops(cfg.trunk, stats)
    total += linear(stats["pairs_2x"], c, c1) + linear(stats["pairs_2x"], c1, c1) + linear(stats["N_2x"], c, c1)
    total += linear(stats["pairs_4x"], c1, c2) + linear(stats["pairs_4x"], c2, c2) + linear(stats["N_4x"], c1, c2)
    return total + linear(stats["N_4x"], c2, cfg.out_channels)


# ---- flow study: single velocity calls, timed, checked and profiled ------------------------------------------


def attempt_study(config, provider, device, dtype, args) -> dict[str, Any]:
    try:
        return flow_study(config, provider, device, dtype, args)
    except Exception as exc:  # the pipeline runs still follow
        log(f"flow study FAILED: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


@torch.inference_mode()
def flow_study(config, provider, device, dtype, args) -> dict[str, Any]:
    """Single velocity calls of both flows on the benchmark's inputs (stage 1: a guided call of 2 rows and an
    unguided one; stage 2: the same on the --voxels[0] shell), this engine and --reference-engine's:

    1. agreement: both engines' outputs in `dtype` against float32 (this engine running the plain guided path,
       keys/values of cat[cond, 0], in float32), as |a - ref| / |ref| per output; and one whole stage-1 sampling
       run (25 steps, CFG 7) of both engines in `dtype`;
    2. time per call (median of 5 after 2 warm-ups) under each attention-kernel preference, with the % of the
       matmul rate for the FLOPs the call must do (unconditional cross-attention not counted);
    3. torch.profiler of one guided call per stage: kernel time by kind, device-busy time against wall time;
       the full tables go to --flow-study DIR;
    4. F.scaled_dot_product_attention alone on the flows' attention shapes, per kernel, with its error against
       float32.
    """
    out_dir = args.flow_study
    out_dir.mkdir(parents=True, exist_ok=True)
    rate = matmul_rate(device, dtype)["tflops"]
    store = ModelStore(config, provider, device, dtype)
    ss, slat = store.get("ss_flow"), store.get("slat_flow")
    gen = torch.Generator(device).manual_seed(args.seed + 99)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device)

    # Inputs: stage 1 (2 guided rows, 1 unguided), stage 2 on the shell voxels.
    shapes = noise_lib.stage1_shapes(config.ss_flow.resolution, config.ss_flow.shape_channels)
    lat2 = {k: randn(2, *v[1:]) for k, v in shapes.items()}
    lat1 = {k: v[:1] for k, v in lat2.items()}
    t2, d2 = torch.full((2,), 300.0, device=device), torch.zeros(2, device=device)
    cond1 = randn(1, config.ss_condition.num_tokens, config.ss_flow.cond_channels)
    shell = ShellShape.fit(args.voxels[0], config.slat_flow.resolution, device)
    stats = voxel_stats(shell.coords, config)
    x2 = randn(2, shell.coords.shape[0], config.slat_flow.in_channels)
    cond2 = randn(1, config.slat_condition.num_tokens, config.slat_flow.cond_channels)
    velocity2 = SlatVelocity(slat, shell.coords)
    kv1, kv2 = ss.condition_kv(cond1), slat.condition_kv(cond2)
    guided1, guided2 = ss.guided_kv(kv1), slat.guided_kv(kv2)

    def cast(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(dtype) for k, v in x.items()}

    calls: dict[str, Callable[[], Any]] = {
        "stage_1 guided (2 rows)": lambda: ss(cast(lat2), t2, d=d2, cond_kv=guided1),
        "stage_1 unguided (1 row)": lambda: ss(cast(lat1), t2[:1], d=d2[:1], cond_kv=kv1),
        "stage_2 guided (2 items)": lambda: velocity2(x2.to(dtype), t2, None, guided2),
        "stage_2 unguided (1 item)": lambda: velocity2(x2[:1].to(dtype), t2[:1], None, kv2),
    }
    flops = {
        "stage_1 guided (2 rows)": ss_flow_flops(config, 2, 1, 0),
        "stage_1 unguided (1 row)": ss_flow_flops(config, 1, 1, 0),
        "stage_2 guided (2 items)": slat_flow_flops(config, stats, 2, 1, 0),
        "stage_2 unguided (1 item)": slat_flow_flops(config, stats, 1, 1, 0),
    }
    result: dict[str, Any] = {"voxels": stats["N"], "M": stats["M"], "matmul_tflops": rate}

    # The reference engine's flows on the same weights (shared tensors, no copy), its plain guided path.
    reference = None
    if args.reference_engine is not None:
        reference = reference_flows(args.reference_engine, ss, slat, config, shell.coords)
        ref_ss, ref_velocity2 = reference
        ref_kv1 = ref_ss.condition_kv(torch.cat([cond1, cond1 * 0]))
        ref_kv2 = ref_velocity2.model.condition_kv(torch.cat([cond2, cond2 * 0]))
        calls["reference stage_1 guided (2 rows)"] = lambda: ref_ss(cast(lat2), t2, d=d2, cond_kv=ref_kv1)
        calls["reference stage_2 guided (2 items)"] = lambda: ref_velocity2(x2.to(dtype), t2, None, ref_kv2)
        flops["reference stage_1 guided (2 rows)"] = flops["stage_1 guided (2 rows)"]
        flops["reference stage_2 guided (2 items)"] = flops["stage_2 guided (2 items)"]

    # 1. Agreement against float32.
    log("flow study: agreement against float32")
    result["agreement"] = agreement(config, provider, device, dtype, calls, lat2, t2, d2, cond1, x2, cond2, shell)
    if reference is not None:
        settings = samplers_for(config, "default")[0]
        x0 = noise_lib.draw_stage1(shapes, torch.Generator(device).manual_seed(args.seed), device)

        def run_stage1(flow, kv, guided):
            def velocity(x, t, d, c):
                return {k: a.float() for k, a in flow(cast(x), t, d=d, cond_kv=c).items()}

            return sample(velocity, x0, kv, settings, guided_condition=guided)

        ours = run_stage1(ss, kv1, guided1)
        theirs = run_stage1(ref_ss, ref_ss.condition_kv(cond1), ref_kv1)
        result["agreement"]["stage_1 sampling, 25 steps CFG 7, vs reference engine"] = {
            k: relative_error(ours[k], theirs[k]) for k in ours}

    # 2. Time per call under each attention-kernel preference.
    log("flow study: timing")
    timings: dict[str, Any] = {}
    for preference in ("torch", "cudnn", "flash"):
        kernels = () if preference == "torch" else (preference,)
        with attention_kernels(kernels):
            for name, fn in calls.items():
                if name.startswith("reference") and preference != "torch":
                    continue
                try:
                    seconds = time_call(fn, device)
                    timings[f"{name} [{preference}]"] = {
                        "ms": 1e3 * seconds, "tflop": flops[name] / 1e12,
                        "pct_of_matmul": 100 * flops[name] / seconds / 1e12 / rate}
                except Exception as exc:
                    timings[f"{name} [{preference}]"] = {"error": f"{type(exc).__name__}: {exc}"}
    if device.type == "cuda":  # launch overhead: the same calls replayed from a captured CUDA graph
        for name in ("stage_1 guided (2 rows)", "stage_2 guided (2 items)"):
            try:
                seconds = time_call(captured(calls[name], device), device)
                timings[f"{name} [torch, CUDA graph]"] = {
                    "ms": 1e3 * seconds, "tflop": flops[name] / 1e12,
                    "pct_of_matmul": 100 * flops[name] / seconds / 1e12 / rate}
            except Exception as exc:
                timings[f"{name} [torch, CUDA graph]"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            gc.collect()
            torch.cuda.empty_cache()
    result["timings"] = timings

    # 3. Profiles of the guided calls (PyTorch's default kernels and cuDNN first).
    log("flow study: profiles")
    result["profiles"] = {}
    for preference in ("torch", "cudnn"):
        with attention_kernels(() if preference == "torch" else (preference,)):
            for name in ("stage_1 guided (2 rows)", "stage_2 guided (2 items)"):
                tag = f"{name.split()[0]}_{preference}"
                result["profiles"][f"{name} [{preference}]"] = profile_call(calls[name], device, out_dir / f"{tag}.txt")

    # 4. SDPA alone on the flows' attention shapes.
    log("flow study: attention kernels")
    heads = config.ss_flow.num_heads
    head_dim = config.ss_flow.model_channels // heads
    m, t1, tc2 = stats["M"], config.ss_condition.num_tokens, config.slat_condition.num_tokens
    n1 = config.ss_flow.resolution**3
    result["qk_norm"] = norm_study(device, dtype, heads, head_dim, {
        "stage_1 shape stream (2 rows)": (2, n1), "stage_2 (2 items)": (2, m)})
    result["sdpa"] = sdpa_study(device, dtype, heads, head_dim, rate, {
        "stage_1 self, shape stream (2 rows)": (2, n1, n1),
        "stage_1 cross, shape stream (1 row)": (1, n1, t1),
        "stage_2 self (2 items)": (2, m, m),
        "stage_2 cross (1 item)": (1, m, tc2),
    })
    del calls, reference
    store.release()
    return result


def reference_flows(path: Path, ss: nn.Module, slat: nn.Module, config: PipelineConfig, coords: torch.Tensor):
    """The SS flow and a SLAT velocity of the engine package copy at `path`, sharing `ss`/`slat`'s tensors."""
    import importlib

    sys.path.insert(0, str(path.resolve().parent))
    ss_mod = importlib.import_module(f"{path.name}.models.ss_flow")
    slat_mod = importlib.import_module(f"{path.name}.models.slat_flow")
    with torch.device("meta"):
        ref_ss, ref_slat = ss_mod.SSFlow(config.ss_flow), slat_mod.SlatFlowModel(config.slat_flow)
    ref_ss.load_state_dict(ss.state_dict(), strict=True, assign=True)
    ref_slat.load_state_dict(slat.state_dict(), strict=True, assign=True)
    return ref_ss.eval(), slat_mod.SlatVelocity(ref_slat.eval(), coords)


def agreement(config, provider, device, dtype, calls, lat2, t2, d2, cond1, x2, cond2, shell) -> dict[str, Any]:
    """Each guided call's output against this engine's float32 plain guided path (cat[cond, 0] keys/values)."""
    store32 = ModelStore(config, provider, device, torch.float32)
    ss32 = store32.get("ss_flow")
    exact1 = ss32(lat2, t2, d=d2, cond_kv=ss32.condition_kv(torch.cat([cond1, cond1 * 0])))
    store32.release("ss_flow")
    del ss32
    slat32 = store32.get("slat_flow")
    exact2 = SlatVelocity(slat32, shell.coords)(x2, t2, None, slat32.condition_kv(torch.cat([cond2, cond2 * 0])))
    store32.release()
    del slat32
    out: dict[str, Any] = {}
    for name, fn in calls.items():
        if "guided (2" not in name or "unguided" in name:
            continue
        got = fn()
        if name.endswith("(2 rows)"):
            out[name] = {f"{k} row {r}": relative_error(got[k][r], exact1[k][r]) for k in exact1 for r in (0, 1)}
        else:
            out[name] = {f"item {r}": relative_error(got[r], exact2[r]) for r in (0, 1)}
    return out


def captured(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """`fn` captured in a CUDA graph (after two warm-up calls on a side stream); returns the replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_breakdown(result: dict[str, Any]) -> str:
    """One run's stage seconds in one line (runs differ mostly by host noise: this says where)."""
    parts = [f"{name} {v['seconds']:.3f}" for name, v in result["stages"].items() if v.get("seconds") is not None]
    steps = result.get("checks", {}).get("postprocess_steps_s", {})
    return ", ".join(parts) + ("" if not steps else " (" + ", ".join(f"{k} {v:.3f}" for k, v in steps.items()) + ")")


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds of `repeats` synchronised calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def kernel_kind(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("flash", "fmha", "attention", "sdpa", "attn")):
        return "attention"
    if any(s in n for s in ("gemm", "nvjet", "cutlass", "xmma", "gemv", "splitk")):
        return "matmul"
    if any(s in n for s in ("layer_norm", "layernorm", "rms", "norm")):
        return "norm"
    if any(s in n for s in ("index", "gather", "scatter")):
        return "index/gather/scatter"
    if any(s in n for s in ("cat", "copy", "memcpy", "memset")):
        return "copy/cat"
    if any(s in n for s in ("reduce", "sum", "max")):
        return "reduction"
    if any(s in n for s in ("elementwise", "vectorized", "unrolled")):
        return "elementwise"
    return "other"


def profile_call(fn: Callable[[], Any], device: torch.device, table_path: Path) -> dict[str, Any]:
    """torch.profiler around one call: kernel time by kind and by name, device busy time, wall time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        fn()
        sync(device)
        wall = time.perf_counter() - t
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    by_kind: dict[str, float] = {}
    by_name: dict[str, list] = {}
    spans = []
    for e in kernels:
        us = e.time_range.elapsed_us()
        spans.append((e.time_range.start, e.time_range.end))
        kind = kernel_kind(e.name)
        by_kind[kind] = by_kind.get(kind, 0.0) + us / 1e3
        entry = by_name.setdefault(e.name[:110], [0.0, 0, kind])
        entry[0] += us / 1e3
        entry[1] += 1
    busy, end = 0.0, -math.inf
    for start, stop in sorted(spans):
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    try:
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=60, max_name_column_width=90)
    except Exception as exc:  # older profilers name the column differently
        table = f"(table failed: {exc})"
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:30]
    summary = {
        "wall_ms": 1e3 * wall, "kernel_ms": sum(by_kind.values()), "busy_ms": busy / 1e3, "kernels": len(kernels),
        "by_kind_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "top_kernels": [{"name": n, "ms": v[0], "count": v[1], "kind": v[2]} for n, v in top],
    }
    table_path.write_text(json.dumps({k: v for k, v in summary.items() if k != "top_kernels"}, indent=1) + "\n\n"
                          + "\n".join(f"{v[0]:9.3f} ms {v[1]:5d}x  {v[2]:<20} {n}" for n, v in top) + "\n\n" + table)
    return summary


def norm_study(device, dtype, heads, head_dim, shapes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The per-head q/k RMS norm on a (B, L, 2, H, D) view of a to_qkv output, three ways: the plain float32 form
    (F.normalize, the previous version), PyTorch's fused rms_norm + gamma, and the engine's `qk_rms_norm`."""
    import torch.nn.functional as F

    from engine.models.attention import rms_norm_heads

    gen = torch.Generator(device).manual_seed(6)
    gamma = (1 + 0.1 * torch.randn(2, heads, head_dim, generator=gen, device=device)).to(dtype)
    d = head_dim
    ways = {
        "float32 normalize (previous)": lambda x: (F.normalize(x.float(), dim=-1) * gamma * d**0.5).to(x.dtype),
        "fused rms_norm + gamma": lambda x: F.rms_norm(x, (d,), eps=1e-24 / d) * gamma,
        "engine rms_norm_heads": lambda x: rms_norm_heads(x, gamma),
    }
    out: dict[str, Any] = {}
    for label, (b, l) in shapes.items():
        qkv = torch.randn(b, l, 3, heads, head_dim, generator=gen, device=device).to(dtype)
        x = qkv[:, :, :2]
        exact = F.normalize(x.double(), dim=-1) * gamma.double() * d**0.5
        row = {}
        for name, fn in ways.items():
            row[name] = {"ms": 1e3 * time_call(lambda: fn(x), device, 2, 10), "rel_error": relative_error(fn(x), exact)}
        out[label] = row
    return out


def sdpa_study(device, dtype, heads, head_dim, rate, shapes: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
    """F.scaled_dot_product_attention alone per kernel on (batch, queries, keys) shapes laid out as the models lay
    them out ((B, L, H, D) views of packed projections, transposed): time, TFLOP/s, error against float32."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}  # fmt: skip
    gen = torch.Generator(device).manual_seed(5)
    out: dict[str, Any] = {}
    for label, (b, lq, lk) in shapes.items():
        q = torch.randn(b, lq, heads, head_dim, generator=gen, device=device).to(dtype).transpose(1, 2)
        kv = torch.randn(b, lk, 2, heads, head_dim, generator=gen, device=device).to(dtype)
        k, v = (t.transpose(1, 2) for t in kv.unbind(2))  # (B, H, S, D), strided like to_kv's split
        exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        flop = 4 * b * lq * lk * heads * head_dim
        row: dict[str, Any] = {"tflop": flop / 1e12}
        for name, backend in backends.items():
            try:
                with sdpa_kernel([backend]):
                    seconds = time_call(lambda: F.scaled_dot_product_attention(q, k, v), device, 2, 10)
                    err = relative_error(F.scaled_dot_product_attention(q, k, v), exact)
                row[name] = {"ms": 1e3 * seconds, "tflops": flop / seconds / 1e12,
                             "pct_of_matmul": 100 * flop / seconds / 1e12 / rate, "rel_error": err}
            except Exception as exc:
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        out[label] = row
        del q, k, v, kv, exact
    return out


# ---- machine, timing helpers, output --------------------------------------------------------------------------


def matmul_rate(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Dense n x n x n matrix product on random data: mean of 10 timed products after 3 warm-ups."""
    n = 8192 if device.type == "cuda" else 1024
    gen = torch.Generator(device).manual_seed(1)
    a = torch.randn(n, n, generator=gen, device=device).to(dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - t) / 10
    return {"tflops": 2 * n**3 / seconds / 1e12, "what": f"{n}x{n}x{n} {str(dtype).replace('torch.', '')} torch.matmul"}


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda,
                    sm_count=props.multi_processor_count)
        info["sdpa_flash"] = torch.backends.cuda.flash_sdp_enabled()
    return info


def synthetic_scene(h: int = 480, w: int = 640, seed: int = 0) -> dict[str, np.ndarray]:
    """A smooth random picture, an elliptic mask, a pointmap (OpenGL camera frame) of a bump on a wall 2 m away."""
    rng = np.random.default_rng(seed)
    small = rng.random((h // 16, w // 16, 3))
    image = (np.kron(small, np.ones((16, 16, 1))) * 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2
    mask = inside < 1
    f = 1.2 * w
    depth = 2.0 - 0.3 * np.sqrt(np.clip(1 - inside, 0, 1))
    pointmap = np.stack([(xx + 0.5 - w / 2) / f * depth, -(yy + 0.5 - h / 2) / f * depth, -depth], axis=-1)
    return {"image": image, "mask": mask, "pointmap": pointmap.astype(np.float32)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sm_clock(device: torch.device) -> int | None:
    try:
        return torch.cuda.clock_rate(device) if device.type == "cuda" else None
    except Exception:  # no NVML
        return None


def allocated_gib(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else 0.0


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0.0


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}  # fmt: skip
    return names[name]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=str))


def render_markdown(report: dict[str, Any]) -> str:
    """One table per voxel configuration: time, share, peaks in both loading modes, FLOPs, rate."""
    rate = report["matmul"]["tflops"]
    m = report["machine"]
    lines = [
        f"Machine: {m.get('gpu', m['cpu'])} ({m['device']}), torch {m['torch']}, dtype {report['dtype']}, "
        f"preset {report['preset']}, quality {report['quality']}; measured matmul rate {rate:.3g} TFLOP/s "
        f"({report['matmul']['what']}).",
        f"Fixed: {report['fixed']}.",
        f"CUDA graphs {report.get('cuda_graphs', '?')}, compiled element-wise code {report.get('compile', '?')}, "
        f"GPU memory cap {report.get('memory_cap_gib', 'none')} GiB, postprocess {report.get('postprocess', '?')}.",
    ]
    for entry in report["configs"]:
        modes = entry["modes"]
        if not modes:
            continue
        main = modes.get("keep", modes.get("staged"))["reported"]
        staged = modes.get("staged", {}).get("reported")
        flops = entry["flops"]
        st = entry["voxel_stats"]
        lines += ["", f"Voxel set: {entry['shape']} (M = {st['M']} tokens at 32^3, {st['N_4x']} voxels at 256^3).",
                  "", "| stage | time s | share | peak GiB keep-loaded | peak GiB staged (load s) | TFLOP | TFLOP/s "
                  "| % of matmul rate |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        total = main["total_s"]
        total_flops = 0
        for key, label, _ in STAGES:
            label = label.format(postprocess=report.get("postprocess", "?"), **flops["samplers"])
            row = main["stages"].get(key)
            if row is None:
                lines.append(f"| {label} | failed | | | | | | |")
                continue
            f = flops.get(key, 0)
            total_flops += f
            achieved = f / row["seconds"] / 1e12 if f and row["seconds"] > 0 else 0.0
            staged_cell = ""
            if staged and key in staged["stages"]:
                peak = staged["stages"][key]["peak_gib"]
                load = staged["stages"].get(f"load:{key}")
                if load:
                    peak = max(peak, load["peak_gib"])
                    staged_cell = f"{peak:.2f} ({load['seconds']:.2f})"
                else:
                    staged_cell = f"{peak:.2f}"
            lines.append(
                f"| {label} | {row['seconds']:.3f} | {100 * row['seconds'] / total:.1f}% | {row['peak_gib']:.2f} | "
                f"{staged_cell} | {f / 1e12:.3g} | {achieved:.3g} | "
                f"{100 * achieved / rate:.1f}% |" if f else
                f"| {label} | {row['seconds']:.3f} | {100 * row['seconds'] / total:.1f}% | {row['peak_gib']:.2f} | "
                f"{staged_cell} | – | – | – |"
            )
        achieved = total_flops / total / 1e12 if total > 0 else 0.0
        staged_total = ""
        if staged:
            staged_total = f"**{staged['peak_gib']:.2f} ({staged['load_s']:.2f})**"
        keep_load = main["stages"].get("load:all", {}).get("seconds", 0.0)
        lines.append(f"| **end to end, one object** (excl. loading) | **{total:.3f}** | 100% | "
                     f"**{main['peak_gib']:.2f}** | {staged_total} | {total_flops / 1e12:.3g} | {achieved:.3g} | "
                     f"{100 * achieved / rate:.1f}% |")
        if staged:
            lines.append(f"\nStaged loading end to end: {staged['total_s']:.3f} s compute + {staged['load_s']:.2f} s "
                         f"loading (peak {staged['peak_compute_gib']:.2f} GiB computing, {staged['peak_load_gib']:.2f} "
                         f"GiB loading).")
        if "keep" in modes:
            totals = modes["keep"]["all_totals_s"]
            later = f"; median of runs 2..: {float(np.median(totals[1:])):.3f} s" if len(totals) > 2 else ""
            lines.append(f"Keep-loaded: all networks loaded once in {keep_load:.2f} s (peak while loading "
                         f"{main['peak_load_gib']:.2f} GiB); runs: {[round(t, 3) for t in totals]} s{later}.")
        lines.append(f"Checks: {main['checks']}")
    if report.get("flow_study"):
        lines += render_study(report["flow_study"])
    if report.get("api_check"):
        lines.append(f"\nPublic API (Pipeline.reconstruct, random occupancy): {report['api_check']}")
    if report["skipped"]:
        lines.append(f"Skipped: {report['skipped']}")
    if report["errors"]:
        lines.append("ERRORS:\n" + "\n".join(report["errors"]))
    return "\n".join(lines)


def render_study(study: dict[str, Any]) -> list[str]:
    if "error" in study:
        return ["", f"Flow study failed: {study['error']}"]
    head = f"Flow study ({study['voxels']} voxels, M = {study['M']}; matmul {study['matmul_tflops']:.0f} TFLOP/s):"
    lines = ["", head,
             "", "| call [attention kernels] | ms | TFLOP | % of matmul rate |", "|---|---:|---:|---:|"]
    for name, row in study["timings"].items():
        if "error" in row:
            lines.append(f"| {name} | {row['error'][:80]} | | |")
        else:
            lines.append(f"| {name} | {row['ms']:.2f} | {row['tflop']:.2f} | {row['pct_of_matmul']:.1f}% |")
    lines += ["", "Agreement (|a - ref| / |ref|, ref = float32 plain guided path):"]
    for name, row in study["agreement"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2e}" for k, v in row.items()))
    lines += ["", "Profiles (one guided call): wall, kernel sum, device busy; kernel time by kind:"]
    for name, p in study["profiles"].items():
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in p["by_kind_ms"].items())
        lines.append(f"- {name}: wall {p['wall_ms']:.1f} ms, kernels {p['kernel_ms']:.1f} ms ({p['kernels']}), "
                     f"busy {p['busy_ms']:.1f} ms; {kinds}")
    lines += ["", "q/k RMS norm alone (ms / rel. error vs float64):"]
    for label, row in study.get("qk_norm", {}).items():
        lines.append(f"- {label}: " + "; ".join(f"{k} {v['ms']:.3f} / {v['rel_error']:.1e}" for k, v in row.items()))
    lines += ["", "SDPA alone (ms / % of matmul rate / rel. error vs float32):"]
    for label, row in study["sdpa"].items():
        cells = [f"{k} " + (f"{v['ms']:.2f} / {v['pct_of_matmul']:.0f}% / {v['rel_error']:.1e}" if "ms" in v
                            else v["error"][:60]) for k, v in row.items() if k != "tflop"]
        lines.append(f"- {label} ({row['tflop']:.2f} TFLOP): " + "; ".join(cells))
    return lines


if __name__ == "__main__":
    sys.exit(main())
