#!/usr/bin/env python3
"""Check the texture bake's nearest-Gaussian search on a CUDA GPU: the grid against scipy's k-d tree.

    python scripts/check_neighbours.py                     # ~790k Gaussians, ~1.9 M query points, k = 8
    python scripts/check_neighbours.py --device cpu --voxels 3000 --queries 200000   # smoke run / CPU figures

Builds decoder-like Gaussians (32 jittered centres in each voxel of a ~25k-voxel ellipsoid shell on a 64^3 grid,
as the Gaussian decoder places them) and query points near the shell's middle surface (where a baked mesh's texels
lie), then times scipy's cKDTree (build + query, workers=-1, from and to the device as the bake does) against
`engine.postprocess.neighbours.NearestNeighbours` with the grid on (build + query, after a warm-up, synchronised).
Prints which level answered how many queries (the k-d tree's share is the fallback fraction) and the largest
disagreement in distance. Well under a minute on an H200.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from engine.postprocess import neighbours  # noqa: E402
from engine.postprocess.bake import GAUSSIAN_NEIGHBOURS  # noqa: E402

GRID = 64  # decoder voxels per axis over the unit cube
AXES = np.array([0.45, 0.405, 0.36])  # the ellipsoid's semi-axes, object units


def shell(voxels: int) -> np.ndarray:
    """Centres (V, 3) of the voxels whose ellipsoidal radius is within a band around 1, V about `voxels`."""
    axis = (np.arange(GRID) + 0.5) / GRID - 0.5
    centres = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    r = np.linalg.norm(centres / AXES, axis=1)
    band = np.sort(np.abs(r - 1.0))
    return centres[np.abs(r - 1.0) <= band[min(voxels, band.size) - 1]]


def decoder_like(voxels: int, per_voxel: int, queries: int, seed: int,
                 spread: float = 1 / 3) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian centres (V * per_voxel, 3) jittered in shell voxels, and query points (queries, 3) near the shell's
    middle surface (normal noise of `spread` voxels)."""
    g = np.random.default_rng(seed)
    centres = shell(voxels)
    jitter = g.uniform(-0.5, 0.5, size=(centres.shape[0], per_voxel, 3)) / GRID
    xyz = (centres[:, None, :] + jitter).reshape(-1, 3).astype(np.float32)
    u = g.normal(size=(queries, 3))
    on = AXES * u / np.linalg.norm(u, axis=1, keepdims=True)  # on the ellipsoid r = 1
    points = on + g.normal(scale=spread / GRID, size=on.shape)
    return xyz, points.astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--voxels", type=int, default=24_700, help="shell voxels (x 32 Gaussians each)")
    p.add_argument("--queries", type=int, default=1_900_000, help="query points (a 2048^2 bake covers ~1.9 M)")
    p.add_argument("--spread", type=float, default=1 / 3, help="query noise off the surface, in voxels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda", help="cuda, or cpu to run the grid on the CPU (smoke run)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("check_neighbours needs a CUDA GPU (or --device cpu for a smoke run)")
        return 2
    k = GAUSSIAN_NEIGHBOURS
    xyz, points = decoder_like(args.voxels, 32, args.queries, args.seed, args.spread)
    queries = torch.from_numpy(points).to(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}: {xyz.shape[0]:,} Gaussians, {points.shape[0]:,} queries, k = {k}")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def scipy_search() -> tuple[torch.Tensor, torch.Tensor]:
        tree = cKDTree(xyz.astype(np.float64), leafsize=16, balanced_tree=False, compact_nodes=False)
        dist, idx = tree.query(queries.cpu().numpy().astype(np.float64), k=k, workers=-1)
        return torch.from_numpy(dist.astype(np.float32)).to(device), torch.from_numpy(idx).to(device)

    def grid_search() -> tuple[torch.Tensor, torch.Tensor, neighbours.NearestNeighbours]:
        search = neighbours.NearestNeighbours(xyz, k, device, grid=True)
        dist, idx = search.query(queries)
        return dist, idx, search

    timings = {}
    for label, run in (("cKDTree", scipy_search), ("grid", grid_search)):
        out = run()  # warm-up
        times = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            out = run()
            sync()
            times.append(time.perf_counter() - t0)
        timings[label] = (min(times), out)
        print(f"{label:>8}: build + query {min(times) * 1e3:8.1f} ms (best of {args.repeats})")

    dist_tree, _ = timings["cKDTree"][1]
    dist_grid, idx_grid, search = timings["grid"][1]
    t0 = time.perf_counter()
    built = neighbours.NearestNeighbours(xyz, k, device, grid=True)
    sync()
    build = time.perf_counter() - t0
    print(f"    grid build alone {build * 1e3:.1f} ms, cell {built._cell:.5f} (voxel {1 / GRID:.5f})")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        built.query(queries)
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
        print(f"    query peak memory above the inputs {peak:.2f} GiB (results included)")
    levels = search.answered
    shares = ", ".join(f"grid {i}: {n / points.shape[0]:.2%}" for i, n in enumerate(levels[:-1]))
    print(f"answered by {shares}; k-d tree (fallback): {levels[-1]:,} = {levels[-1] / points.shape[0]:.3%}")
    recomputed = (queries[:, None, :] - torch.from_numpy(xyz).to(device)[idx_grid]).norm(dim=-1)
    worst = (dist_grid - dist_tree).abs().max().item()
    consistent = (recomputed - dist_grid).abs().max().item()
    print(f"max |distance grid - tree| = {worst:.2e}, max |returned - recomputed| = {consistent:.2e}")
    agree = worst <= 1e-5 and consistent <= 1e-5
    print("distances agree" if agree else "DISTANCES DISAGREE")
    print(f"speed-up {timings['cKDTree'][0] / timings['grid'][0]:.1f}x")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
