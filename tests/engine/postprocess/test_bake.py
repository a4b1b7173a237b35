"""The bake's Gaussian colour blend against its definition, written out per point and Gaussian in numpy."""
from __future__ import annotations

import numpy as np
import torch

from engine.assets import Gaussians
from engine.postprocess.bake import GAUSSIAN_MIN_SIGMA, GAUSSIAN_NEIGHBOURS, _GaussianBlend


def _rotation(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation (column vectors), textbook form."""
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def test_the_blend_weighs_the_nearest_gaussians_by_opacity_and_anisotropic_falloff():
    rng = np.random.default_rng()
    n, q = 300, 200
    g = Gaussians(
        xyz=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        colors=rng.uniform(0, 1, (n, 3)).astype(np.float32),
        opacity=rng.uniform(0.1, 1, n).astype(np.float32),
        scaling=rng.uniform(0.05, 0.6, (n, 3)).astype(np.float32),  # strongly anisotropic
        rotation=rng.normal(size=(n, 4)).astype(np.float32),
    )
    points = rng.uniform(-1, 1, (q, 3)).astype(np.float32)
    base = rng.uniform(0, 1, (q, 3)).astype(np.float32)
    prior = 0.05
    got = _GaussianBlend(g, torch.device("cpu")).blend(torch.from_numpy(points), torch.from_numpy(base), prior).numpy()

    want = np.empty((q, 3))
    for i, p in enumerate(points.astype(np.float64)):
        near = np.argsort(((g.xyz - p) ** 2).sum(1))[:GAUSSIAN_NEIGHBOURS]
        num, den = prior * base[i].astype(np.float64), prior
        for j in near:
            local = _rotation(g.rotation[j].astype(np.float64)).T @ (p - g.xyz[j])  # the offset in the Gaussian's axes
            sigma = np.sqrt(g.scaling[j].astype(np.float64) ** 2 + GAUSSIAN_MIN_SIGMA ** 2)
            weight = g.opacity[j] * np.exp(-0.5 * ((local / sigma) ** 2).sum())
            num, den = num + weight * g.colors[j], den + weight
        want[i] = num / den
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.abs(want - base).max() > 0.1  # the Gaussians do move the colours away from the base


def test_the_texture_does_not_depend_on_the_chunk_size(monkeypatch):
    from engine.postprocess import bake, closest
    from engine.postprocess.decimate import decimate
    from engine.postprocess.procedural import noisy_sphere
    from engine.postprocess.unwrap import unwrap

    rng = np.random.default_rng()
    source = noisy_sphere(20_000, seed=int(rng.integers(1 << 30)))
    low, _ = unwrap(decimate(source, 2_000, device="cpu"), 256, 2)
    colors = bake.ColorSource(source, None, "cpu")
    whole, covered = bake.bake_texture(low, colors, 256)
    monkeypatch.setattr(bake, "CPU_CHUNK", 4_097)  # many chunks, one ending inside a 2 x 2 texel block
    monkeypatch.setattr(closest, "CPU_CHUNK", 1_000)
    chunked, covered_chunked = bake.bake_texture(low, colors, 256)
    assert covered.sum() > 10_000 and np.array_equal(covered, covered_chunked)
    assert np.abs(whole.astype(int) - chunked.astype(int)).max() <= 1  # the same colours, up to rounding
