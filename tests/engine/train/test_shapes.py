"""Procedural shapes: exact SDFs and the canonical frame (centred bounding box, longest side 1)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.train.shapes import (
    KIND_BOX,
    KIND_REVOLVED,
    SHAPE_NAMES,
    box,
    box_sdf,
    capsule,
    cone,
    cylinder,
    primitive_sdf,
    random_shape,
    revolved_sdf,
    sdf_by_kind,
    shape_sdf,
    sphere,
    torus,
)


def _points(n: int, seed: int, spread: float = 0.8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 2 * spread


def test_primitive_sdfs_equal_closed_form_distances():
    p = _points(4000, 0)
    x, y, z = p.unbind(-1)
    rho = torch.sqrt(x * x + y * y)
    # sphere of radius 0.5
    assert torch.allclose(shape_sdf(sphere(), p), p.norm(dim=-1) - 0.5, atol=1e-9)
    # torus (major 0.3, minor 0.1) -> canonical: divided by its longest side 2 * 0.4
    t = torus(0.3, 0.1)
    q = p * 0.8
    expected = torch.sqrt((q[:, :2].norm(dim=-1) - 0.3) ** 2 + q[:, 2] ** 2) - 0.1
    assert torch.allclose(shape_sdf(t, p) * 0.8, expected, atol=1e-9)
    # capsule: radius 0.2, segment half length 0.3 -> longest side 1.0 (height), no rescale
    seg = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z.clamp(-0.3, 0.3)], -1)
    assert torch.allclose(shape_sdf(capsule(0.2, 0.3), p), (p - seg).norm(dim=-1) - 0.2, atol=1e-9)
    # cylinder radius 0.5, half height 0.25 (already canonical)
    dr, dz = rho - 0.5, z.abs() - 0.25
    cyl = torch.minimum(torch.maximum(dr, dz), torch.zeros_like(dr)) + torch.sqrt(
        dr.clamp_min(0) ** 2 + dz.clamp_min(0) ** 2
    )
    assert torch.allclose(shape_sdf(cylinder(0.5, 0.25), p), cyl, atol=1e-9)
    # box half sides (0.5, 0.3, 0.2)
    qb = p.abs() - torch.tensor([0.5, 0.3, 0.2], dtype=p.dtype)
    bx = qb.clamp_min(0).norm(dim=-1) + qb.amax(-1).clamp_max(0)
    assert torch.allclose(shape_sdf(box(0.3, 0.5, 0.2), p), bx, atol=1e-9)


def test_cone_sdf_equals_brute_force_distance_to_its_profile():
    p = _points(1500, 1)
    c = cone(0.5, 0.5, 0.1)  # canonical already: height 1, diameter 1
    # Dense polyline of the surface profile in (rho, z): bottom, side, top.
    s = torch.linspace(0, 1, 2001, dtype=torch.float64)
    bottom = torch.stack([0.5 * s, torch.full_like(s, -0.5)], -1)
    side = torch.stack([0.5 + (0.1 - 0.5) * s, -0.5 + s], -1)
    top = torch.stack([0.1 * s, torch.full_like(s, 0.5)], -1)
    profile = torch.cat([bottom, side, top])
    q = torch.stack([p[:, :2].norm(dim=-1), p[:, 2]], -1)
    dist = torch.cdist(q, profile).amin(-1)
    rho_max = 0.5 + (0.1 - 0.5) * (q[:, 1] + 0.5)
    inside = (q[:, 1].abs() < 0.5) & (q[:, 0] < rho_max)
    expected = torch.where(inside, -dist, dist)
    assert torch.allclose(shape_sdf(c, p), expected, atol=3e-4)


def test_by_kind_evaluation_equals_the_branching_one():
    g = torch.Generator().manual_seed(2)
    kind = torch.randint(0, 2, (64,), generator=g)
    params = torch.rand(64, 5, generator=g) * 0.4
    params[kind == KIND_REVOLVED, 0] = 0.0
    pts = torch.randn(64, 100, 3, generator=g)
    expected = primitive_sdf(pts, kind[:, None], params[:, None])
    assert torch.allclose(sdf_by_kind(pts, kind, params), expected)
    assert torch.equal(expected[kind == KIND_BOX], box_sdf(pts, params[:, None])[kind == KIND_BOX])
    assert torch.equal(expected[kind == KIND_REVOLVED], revolved_sdf(pts, params[:, None])[kind == KIND_REVOLVED])
    assert torch.isinf(sdf_by_kind(pts, torch.full_like(kind, -1), params)).all()


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_random_shapes_touch_every_face_of_their_centred_bounding_box_of_longest_side_one(name):
    uv = torch.linspace(-0.5, 0.5, 101, dtype=torch.float64)
    uu, vv = torch.meshgrid(uv, uv, indexing="ij")
    for seed in range(4):
        shape = random_shape(np.random.default_rng(seed), name)
        ext = torch.tensor(shape.extent, dtype=torch.float64)
        assert float(ext.max()) == pytest.approx(1.0) and (ext <= 1.0 + 1e-12).all()
        for axis in range(3):
            others = [a for a in range(3) if a != axis]
            for sign in (-1.0, 1.0):
                face = torch.zeros(101 * 101, 3, dtype=torch.float64)
                face[:, others[0]] = (uu * ext[others[0]]).reshape(-1)
                face[:, others[1]] = (vv * ext[others[1]]).reshape(-1)
                face[:, axis] = sign * ext[axis] / 2
                assert shape_sdf(shape, face).min() <= 0.01, (name, seed, axis, sign)  # touches the face
                face[:, axis] = sign * (ext[axis] / 2 + 1e-3)
                assert shape_sdf(shape, face).min() >= 1e-3 - 1e-9, (name, seed, axis, sign)  # not beyond it
        if name == "box":
            assert shape.extent[0] >= shape.extent[1]


def test_two_coloured_shapes_use_both_colour_slots():
    rng = np.random.default_rng(3)
    for name in SHAPE_NAMES:
        assert random_shape(rng, name, two_colour_probability=0.0).colour_slots == (0,)
        assert random_shape(rng, name, two_colour_probability=1.0).colour_slots == (0, 1)
    with pytest.raises(ValueError, match="unknown shape"):
        random_shape(rng, "teapot")


def test_sdf_is_one_lipschitz_for_every_shape():
    rng = np.random.default_rng(4)
    a, b = _points(3000, 5), _points(3000, 6)
    for name in SHAPE_NAMES:
        shape = random_shape(rng, name)
        ratio = (shape_sdf(shape, a) - shape_sdf(shape, b)).abs() / (a - b).norm(dim=-1)
        assert ratio.max() <= 1 + 1e-6, name
    assert math.isfinite(float(shape_sdf(sphere(), a).sum()))
