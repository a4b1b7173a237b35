"""The pipeline benchmark's stand-in decoder surface (`scripts/bench_pipeline.py`, `ShellShape.with_sdf`) is the
smooth ellipsoid a trained decoder would give, not terraces along the voxel band's faces."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from engine.assets import Mesh
from engine.mesh_extraction import CHANNELS, features_to_mesh
from engine.postprocess.cleanup import clean_mesh

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_pipeline.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_pipeline", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_surface_runs_inside_the_voxel_band_and_is_smooth():
    bench = _bench()
    coarse, fine = 16, 64  # the 64^3 -> 256^3 of the official decoder, scaled down
    shape = bench.ShellShape.make(coarse, 1.0, 0.0, torch.device("cpu"))
    children = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    voxels = (shape.coords[:, None, 1:].long() * 4 + children).reshape(-1, 3)  # every voxel's 4^3 fine cells
    gen = torch.Generator().manual_seed(7)
    feats = torch.randn(voxels.shape[0], 101, generator=gen)  # a random decoder's other channels
    feats[:, slice(*CHANNELS["deform"])] = 0  # undeformed lattice: the test is about where the SDF puts the surface
    feats[:, slice(*CHANNELS["weights"])] = 0
    coords = torch.cat([torch.zeros_like(voxels[:, :1]), voxels], 1).int()
    feats = shape.with_sdf(coords, feats, fine)
    surface = features_to_mesh(voxels, feats, fine)
    mesh, _ = clean_mesh(Mesh(vertices=surface.vertices.numpy(), faces=surface.faces.numpy().astype(np.int32)))

    # The kept surface sits BAND_MIDDLE of a coarse voxel inside the ellipsoid (vertices in grid units).
    grid = (mesh.vertices.astype(np.float64) + 0.5) * coarse
    axes = np.array(bench.ShellShape.AXES) * (coarse / 2 - 0.5)
    r = np.linalg.norm((grid - coarse / 2) / axes, axis=1)
    depth = (1 - r) * axes.min()  # about the depth below the ellipsoid's surface, in coarse voxels
    assert abs(np.median(depth) - bench.ShellShape.BAND_MIDDLE) < 0.15, np.median(depth)
    assert np.quantile(np.abs(depth - bench.ShellShape.BAND_MIDDLE), 0.95) < 0.3

    # Smooth: neighbouring faces nearly coplanar (terraces along voxel faces put a tenth of them at 90 degrees).
    t = mesh.vertices[mesh.faces.astype(np.int64)]
    normals = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    edges = np.sort(np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]), 1)
    face = np.tile(np.arange(len(mesh.faces)), 3)
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    same = (edges[order][1:] == edges[order][:-1]).all(1)
    a, b = face[order][:-1][same], face[order][1:][same]
    angles = np.degrees(np.arccos(np.clip((normals[a] * normals[b]).sum(1), -1, 1)))
    assert np.quantile(angles, 0.99) < 45, np.quantile(angles, [0.5, 0.9, 0.99])
