#!/usr/bin/env python3
"""Check the mesh decoder's brick-wise convolutions on a CUDA GPU against the neighbour-gather path.

    python scripts/check_bricks.py                  # official mesh decoder, ~25k-voxel shell
    python scripts/check_bricks.py --voxels 42000   # the voxel cap
    python scripts/check_bricks.py --preset tiny --device cpu --voxels 300 --repeats 1   # smoke run

Builds the official mesh decoder with seeded random weights (the rule and seeds of `scripts/bench_pipeline.py`) and
runs it on the benchmark's ellipsoid shell with random latents, with the subdivided voxels' convolutions brick-wise
(`engine/sparse/bricks.py`, the default on CUDA) and through the neighbour gathers, alternating, each on a fresh
voxel set (the tables are built inside the timing, as for every object). Prints per path the median time and the
peak memory above the start, then the differences max|a - b| / max|b| and mean|a - b| / mean|b| of the outputs:
bricks against gathers in bfloat16 (the production dtype), the same in float32 (both paths must agree there to
float rounding), and bfloat16 against float32 for the gathers alone (the floor a bfloat16 difference is read
against). Well under a minute on an H200.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import torch  # noqa: E402

import bench_pipeline  # noqa: E402
from engine.config import preset  # noqa: E402
from engine.model_store import build  # noqa: E402
from engine.sparse import conv  # noqa: E402
from engine.sparse.tensor import SparseTensor  # noqa: E402

GIB = 1024**3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--voxels", type=int, default=25000, help="voxels of the ellipsoid shell at 64^3")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per path (after one warm-up each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="official", choices=("official", "tiny"))
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (bricks forced on there)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("check_bricks: no CUDA GPU here (the CPU tests hold the brick path to the parity outputs)")
        return 2
    cuda = device.type == "cuda"
    config = preset(args.preset)
    with torch.device(device):
        net = build("mesh_decoder", config)
    net.load_state_dict(bench_pipeline.HostWeights(config, args.seed, device)("mesh_decoder"))
    net = net.eval().requires_grad_(False)
    coords = bench_pipeline.ShellShape.fit(args.voxels, config.slat_flow.resolution, device).coords
    gen = torch.Generator(device).manual_seed(args.seed + 7)
    latent = torch.randn(coords.shape[0], config.mesh_decoder.trunk.latent_channels, generator=gen, device=device)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"{name}, torch {torch.__version__}; {args.preset} mesh decoder on {coords.shape[0]} voxels "
          f"({64 * coords.shape[0]} at 4x)")

    def run(path: str, dtype: torch.dtype) -> torch.Tensor:
        conv.BRICK_DEVICES = (device.type,) if path == "bricks" else ()
        with torch.no_grad():
            return net.to(dtype)(SparseTensor(coords, latent.to(dtype))).feats.float()

    outputs: dict[tuple[str, torch.dtype], torch.Tensor] = {}
    default_devices = conv.BRICK_DEVICES
    try:
        for dtype in (torch.float32, torch.bfloat16):
            times: dict[str, list[float]] = {"bricks": [], "gathers": []}
            peaks: dict[str, float] = {}
            for repeat in range(args.repeats + 1):
                for path in times:
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    start_bytes = torch.cuda.memory_allocated() if cuda else 0
                    start = time.perf_counter()
                    outputs[path, dtype] = run(path, dtype)
                    if cuda:
                        torch.cuda.synchronize()
                    if repeat:
                        times[path].append(time.perf_counter() - start)
                    peaks[path] = (torch.cuda.max_memory_allocated() - start_bytes) / GIB if cuda else 0.0
            for path, seconds in times.items():
                name = str(dtype).removeprefix("torch.")
                print(f"{name:9s} {path:8s} median {statistics.median(seconds) * 1e3:7.1f} ms "
                      f"(min {min(seconds) * 1e3:.1f}), peak above start {peaks[path]:.2f} GiB")
    finally:
        conv.BRICK_DEVICES = default_devices
    f32, bf16 = torch.float32, torch.bfloat16
    print("bricks vs gathers, bfloat16:", _difference(outputs["bricks", bf16], outputs["gathers", bf16]))
    print("bricks vs gathers, float32: ", _difference(outputs["bricks", f32], outputs["gathers", f32]))
    print("gathers bfloat16 vs float32:", _difference(outputs["gathers", bf16], outputs["gathers", f32]))
    return 0


def _difference(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a - b).abs()
    return f"max {float(d.max() / b.abs().max()):.2e}, mean {float(d.mean() / b.abs().mean()):.2e}"


if __name__ == "__main__":
    sys.exit(main())
