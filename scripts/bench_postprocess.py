"""Benchmark of the artist-mesh postprocess on a procedural decoder-sized mesh; prints a table.

    .venv/bin/python scripts/bench_postprocess.py                       # 1 M faces -> 30k faces, 2048^2 texture
    .venv/bin/python scripts/bench_postprocess.py --faces 200000 --runs 3 --device cpu
    .venv/bin/python scripts/bench_postprocess.py --device cuda --compare-decimators   # + both simplifiers alone
    .venv/bin/python scripts/bench_postprocess.py --profile-cleanup --inner-wall        # + clean-up's own steps

The input is `engine.postprocess.procedural.noisy_sphere` (a bumpy, jittered sphere with a smooth colour field,
duplicated seam vertices and a few floaters), so the clean-up, decimation, unwrap and bake all have real work.
Each stage is timed through `make_artist_mesh`'s progress callback (wall clock); the table shows the median over
`--runs` runs after one warm-up run, and the quality figures of the last run. `--decimator` picks the simplifier
(default "auto": torch's parallel edge collapse on CUDA, fast-simplification on CPU); `--compare-decimators`
adds a table that times `decimate` alone on the cleaned mesh with each simplifier (torch on the device) and
measures how far each result lies from the source surface. `--profile-cleanup` adds rows under the clean-up
stage for its steps (`clean_mesh`'s `on_step`, timed in separate calls of `clean_mesh` on the same device, with the
device synchronised at each step). `--inner-wall` adds what raw pipeline meshes carry: an inward-wound copy of the
sphere inside it (half its faces), which clean-up drops.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.assets import Mesh  # noqa: E402
from engine.postprocess import make_artist_mesh, resolve_face_count  # noqa: E402
from engine.postprocess.cleanup import clean_mesh  # noqa: E402
from engine.postprocess.decimate import DECIMATORS, decimate, resolve_decimator  # noqa: E402
from engine.postprocess.deviation import surface_deviation  # noqa: E402
from engine.postprocess.procedural import color_field, noisy_sphere  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=1_000_000, help="faces of the input mesh")
    parser.add_argument("--target", default="30000", help="face count or preset of the result")
    parser.add_argument("--texture", type=int, default=2048, help="texture size")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (after one warm-up)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--decimator", default="auto", choices=DECIMATORS, help="simplifier of the decimate stage")
    parser.add_argument("--compare-decimators", action="store_true",
                        help="also time decimate() alone with each simplifier and measure its distance to the source")
    parser.add_argument("--profile-cleanup", action="store_true", help="also time clean-up's steps")
    parser.add_argument("--inner-wall", action="store_true",
                        help="add an inward-wound inner copy of the sphere (half the faces), as raw meshes carry")
    args = parser.parse_args()

    mesh = noisy_sphere(args.faces, floaters=3, seed=0)
    if args.inner_wall:
        mesh = with_inner_wall(mesh, args.faces // 2)
    print(f"input: {mesh.faces.shape[0]:,} faces, {mesh.vertices.shape[0]:,} vertices; "
          f"target {args.target} faces, texture {args.texture}^2; device {args.device or 'auto'}; "
          f"torch threads {torch.get_num_threads()} (the postprocess uses 1 on CPU), {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"decimator: {resolve_decimator(args.decimator, device)}")
    if torch.device(device).type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")

    stages = ["clean-up", "decimate", "unwrap", "bake"]
    timings: dict[str, list[float]] = {s: [] for s in stages + ["total"]}
    result = None
    for run in range(args.runs + 1):
        marks: list[tuple[str, float]] = []

        def progress(stage: str, fraction: float) -> None:
            if not marks or marks[-1][0] != stage:
                marks.append((stage, time.perf_counter()))

        start = time.perf_counter()
        result = make_artist_mesh(mesh, faces=args.target, texture_size=args.texture, progress=progress,
                                  device=args.device, decimator=args.decimator)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        end = time.perf_counter()
        if run == 0:
            continue  # warm-up (imports, allocator)
        bounds = [t for _, t in marks] + [end]
        for (stage, t0), t1 in zip(marks, bounds[1:]):
            timings[stage].append(t1 - t0)
        timings["total"].append(end - start)

    steps = profile_cleanup(mesh, device, args.runs) if args.profile_cleanup else {}
    print()
    print("| stage | median s | min s |")
    print("|---|---:|---:|")
    for stage in stages + ["total"]:
        values = timings[stage]
        print(f"| {stage} | {statistics.median(values):.2f} | {min(values):.2f} |")
        if stage == "clean-up":
            for step, values in steps.items():
                print(f"| &nbsp; {step} | {statistics.median(values):.3f} | {min(values):.3f} |")
    print()
    print(f"result: {result.faces.shape[0]:,} faces, {result.vertices.shape[0]:,} vertices (split at UV seams), "
          f"texture {result.texture.shape[1]}x{result.texture.shape[0]}")
    print(f"texture colour error at random surface points: {colour_error(result) * 255:.2f}/255 (mean abs)")
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
          f"; load average at the end: {os.getloadavg()[0]:.1f}")
    if args.compare_decimators:
        compare_decimators(mesh, resolve_face_count(args.target), device, args.runs)


def with_inner_wall(mesh: Mesh, faces: int) -> Mesh:
    """`mesh` plus an inward-wound noisy sphere of about `faces` faces at 0.85 of its size, inside it."""
    wall = noisy_sphere(faces, seed=1)
    colors = None if mesh.vertex_colors is None else np.concatenate([mesh.vertex_colors, wall.vertex_colors])
    return Mesh(np.concatenate([mesh.vertices, wall.vertices * 0.85]).astype(np.float32),
                np.concatenate([mesh.faces, wall.faces[:, [0, 2, 1]] + mesh.vertices.shape[0]]).astype(np.int32),
                colors)


def profile_cleanup(mesh: Mesh, device: str, runs: int) -> dict[str, list[float]]:
    """Seconds per clean-up step over `runs` calls of `clean_mesh` on `device` (after one warm-up call)."""
    cuda = torch.device(device).type == "cuda"
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(1)  # as make_artist_mesh does on the CPU
    steps: dict[str, list[float]] = {}
    for run in range(runs + 1):
        marks = [("start", time.perf_counter())]

        def on_step(name: str) -> None:
            if cuda:
                torch.cuda.synchronize()
            marks.append((name, time.perf_counter()))

        _, report = clean_mesh(mesh, device=device, on_step=on_step)
        if run > 0:
            for (_, t0), (name, t1) in zip(marks, marks[1:]):
                steps.setdefault(name, []).append(t1 - t0)
    torch.set_num_threads(threads)
    print(f"clean-up: {report}")
    return steps


def compare_decimators(mesh, target: int, device: str, runs: int) -> None:
    """Time `decimate` alone on the cleaned mesh with each simplifier; distance of each result to the source."""
    source, _ = clean_mesh(mesh)
    diag = float(np.linalg.norm(source.vertices.max(0) - source.vertices.min(0)))
    print()
    print(f"decimate alone: {source.faces.shape[0]:,} -> {target:,} faces (median and min of {runs} runs after "
          f"one warm-up; distance: `deviation.surface_deviation`, 20k random surface points each way, % of the "
          f"bounding-box diagonal)")
    print()
    print("| simplifier | device | median s | min s | faces | max distance % | mean distance % |")
    print("|---|---|---:|---:|---:|---:|---:|")
    threads = torch.get_num_threads()
    for decimator in ("torch", "fast-simplification"):
        where = device if decimator == "torch" else "cpu"
        times, low = [], None
        torch.set_num_threads(1 if torch.device(where).type == "cpu" else threads)  # as make_artist_mesh does
        for run in range(runs + 1):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            low = decimate(source, target, device=where, decimator=decimator)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if run > 0:
                times.append(time.perf_counter() - start)
        torch.set_num_threads(threads)
        worst, mean = surface_deviation(source, low)
        print(f"| {decimator} | {where} | {statistics.median(times):.3f} | {min(times):.3f} | {low.faces.shape[0]:,} "
              f"| {100 * worst / diag:.3f} | {100 * mean / diag:.4f} |")


def colour_error(result) -> float:
    """Mean absolute error of the texture (bilinear) against the procedural colour field at surface points."""
    g = torch.Generator().manual_seed(1)
    faces = torch.from_numpy(result.faces.astype(np.int64))
    pick = torch.randint(0, faces.shape[0], (20000,), generator=g)
    bary = torch.rand(20000, 3, generator=g)
    bary = bary / bary.sum(1, keepdim=True)
    corners = faces[pick]
    points = (torch.from_numpy(result.vertices)[corners] * bary[:, :, None]).sum(1).numpy()
    uv = (torch.from_numpy(result.uvs)[corners] * bary[:, :, None]).sum(1).numpy()
    seen = bilinear(result.texture, uv)
    truth = color_field(points / np.linalg.norm(points, axis=1, keepdims=True))
    return float(np.abs(seen - truth).mean())


def bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample an (H, W, 3) uint8 texture (row 0 at the top) at UVs (origin bottom-left) -> (N, 3) in [0, 1]."""
    h, w = texture.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    tex = texture.astype(np.float64) / 255.0

    def at(yy, xx):
        return tex[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


if __name__ == "__main__":
    main()
