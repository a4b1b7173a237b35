"""Mesh decoder output -> mesh: parity with the official SparseFeatures2Mesh + FlexiCubes, and known answers."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from engine.errors import InputError
from engine.flexicubes import CORNER_OFFSETS
from engine.mesh_extraction import CHANNELS, decoded_to_mesh, features_to_mesh
from engine.sparse.tensor import SparseTensor
from tests.engine.parity import assert_close, load_case


@pytest.fixture(scope="module")
def case():
    return load_case("mesh_decoder")


def test_matches_official_mesh_of_the_parity_decoder_output(case):
    assert case.meta["config"]["flexicubes_res"] == 64
    assert case.meta["config"]["channel_layout"] == {k: list(v) for k, v in CHANNELS.items()}
    mesh = features_to_mesh(case.outputs["raw_coords"][:, 1:], case.outputs["raw"], resolution=64)
    expected = case.outputs
    # Same vertex and face order as upstream (torch.unique-based numbering), so rows compare one to one.
    assert_close(mesh.vertices, expected["vertices"], atol=1e-4, rtol=0, what="vertices")
    assert_close(mesh.vertex_attrs, expected["vertex_attrs"], atol=1e-3, rtol=0, what="vertex_attrs")
    assert mesh.faces.dtype == torch.int32
    assert torch.equal(mesh.faces, expected["faces"]), "faces differ from the official ones"


def test_decoded_sparse_tensor_gives_the_same_mesh_and_one_batch_item_at_a_time(case):
    coords, raw = case.outputs["raw_coords"], case.outputs["raw"]
    mesh = decoded_to_mesh(SparseTensor(coords, raw), resolution=64)
    assert torch.equal(mesh.faces, case.outputs["faces"])
    two = coords.clone()
    two[:10, 0] = 1
    with pytest.raises(InputError, match="batch"):
        decoded_to_mesh(SparseTensor(two, raw), resolution=64)


def ball_features(R: int, radius: float, gen: torch.Generator, logit: torch.Tensor):
    """Voxels = cells with a corner within 1.5 cells of a ball; exact sdf at the corners (bias undone),
    random deformation and weights, colour logits `logit` (6,) everywhere."""
    h = 1.0 / R
    axis = torch.arange(R)
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    corners = cells[:, None, :] + torch.tensor(CORNER_OFFSETS)[None]  # (M, 8, 3)
    sdf = (corners.double() / R - 0.5).norm(dim=-1) - radius  # (M, 8)
    keep = (sdf < 1.5 * h).any(dim=1)
    cells, sdf = cells[keep], sdf[keep].float()
    order = torch.randperm(cells.shape[0], generator=gen)
    cells, sdf = cells[order], sdf[order]
    N = cells.shape[0]
    feats = torch.empty(N, 101)
    feats[:, 0:8] = sdf + 1.0 / R  # the extraction adds sdf_bias = -1/R
    feats[:, 8:32] = torch.randn(N, 24, generator=gen)
    feats[:, 32:53] = 1.5 * torch.randn(N, 21, generator=gen)
    feats[:, 53:101] = logit.repeat(8)
    return cells, feats


def test_ball_of_voxels_gives_a_closed_outward_sphere_with_the_constant_colour():
    gen = torch.Generator().manual_seed(0)
    R, radius = 32, 0.35
    logit = torch.randn(6, generator=gen)
    coords, feats = ball_features(R, radius, gen, logit)
    mesh = features_to_mesh(coords.int(), feats, resolution=R)
    V, F = mesh.vertices.shape[0], mesh.faces.shape[0]
    assert F > 1000 and mesh.faces.dtype == torch.int32 and mesh.vertices.dtype == torch.float32
    f = mesh.faces.long()
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    _, undirected_count = torch.unique(torch.sort(directed, dim=1).values, dim=0, return_counts=True)
    _, directed_count = torch.unique(directed, dim=0, return_counts=True)
    assert bool((undirected_count == 2).all()), "watertight: every edge shared by two faces"
    assert bool((directed_count == 1).all()), "consistently oriented"
    assert V - undirected_count.numel() + F == 2  # a sphere
    # Within the deformation (at most half a cell) plus a cell of the true sphere.
    assert float((mesh.vertices.norm(dim=1) - radius).abs().max()) < 1.5 / R
    assert float(mesh.vertices.abs().max()) <= 0.5
    v = mesh.vertices.double()
    volume = float(torch.linalg.det(torch.stack([v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]], 1)).sum() / 6)
    assert abs(volume / (4 / 3 * math.pi * radius**3) - 1) < 0.05  # counter-clockwise seen from outside
    assert mesh.vertex_attrs.shape == (V, 6)
    torch.testing.assert_close(mesh.vertex_attrs, torch.sigmoid(logit).expand(V, 6), atol=1e-6, rtol=1e-6)


def test_one_voxel_inside_closes_against_unlisted_outside_points_with_their_default_colour():
    """All 8 corners of one voxel at sdf -q: the surface crosses the 24 edges to the untouched lattice points
    (sdf +1, colour sigmoid(0) = 0.5, weights 0) at q / (1 + q) of the way out."""
    gen = torch.Generator().manual_seed(1)
    R = 8
    q = 0.2 + 0.5 * float(torch.rand(1, generator=gen))
    logit = torch.randn(6, generator=gen)
    feats = torch.randn(1, 101, generator=gen)
    feats[:, 0:8] = -q + 1.0 / R
    feats[:, 53:101] = logit.repeat(8)
    cell = torch.tensor([[3, 4, 2]], dtype=torch.int32)
    mesh = features_to_mesh(cell, feats, resolution=R)
    assert mesh.vertices.shape == (26, 3) and mesh.faces.shape == (48, 3)  # one dual vertex per neighbour cell
    expected = (torch.sigmoid(logit) + 0.5 * q) / (1 + q)
    torch.testing.assert_close(mesh.vertex_attrs, expected.expand(26, 6), atol=1e-6, rtol=1e-6)
    # Each neighbour cell (x-major order) holds one dual vertex: the mean of the crossings on its crossed edges,
    # from a deformed voxel corner a to the undeformed outside point b: (x_a + q x_b) / (1 + q).
    c = cell[0].tolist()
    deform = feats[0, 8:32].view(8, 3)
    expected_vertices = []
    for d in itertools.product((-1, 0, 1), repeat=3):
        if d == (0, 0, 0):
            continue
        n = [c[i] + d[i] for i in range(3)]
        crossings = []
        for k, o in enumerate(CORNER_OFFSETS):
            a = [c[i] + o[i] for i in range(3)]
            for axis in range(3):
                b = list(a)
                b[axis] += 1 if o[axis] else -1  # the lattice edge leaving the voxel
                if all(n[i] <= min(a[i], b[i]) and max(a[i], b[i]) <= n[i] + 1 for i in range(3)):
                    xa = torch.tensor(a) / R - 0.5 + (1 - 1e-8) / (2 * R) * torch.tanh(deform[k])
                    xb = torch.tensor(b) / R - 0.5
                    crossings.append((xa + q * xb) / (1 + q))
        expected_vertices.append(torch.stack(crossings).mean(dim=0))
    torch.testing.assert_close(mesh.vertices, torch.stack(expected_vertices), atol=1e-6, rtol=0)


def test_no_voxels_or_no_inside_corner_gives_an_empty_mesh():
    empty = features_to_mesh(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, 101), resolution=16)
    assert empty.vertices.shape == (0, 3) and empty.faces.shape == (0, 3) and empty.vertex_attrs.shape == (0, 6)
    gen = torch.Generator().manual_seed(2)
    coords = torch.randint(0, 16, (40, 3), generator=gen).unique(dim=0)
    feats = torch.randn(coords.shape[0], 101, generator=gen)
    feats[:, :8] = feats[:, :8].abs() + 0.1  # every corner outside
    out = features_to_mesh(coords, feats, resolution=16)
    assert out.is_empty and out.faces.dtype == torch.int32


def test_half_precision_features_are_extracted_in_float32(case):
    raw = case.outputs["raw"].to(torch.bfloat16)
    mesh = features_to_mesh(case.outputs["raw_coords"][:, 1:], raw, resolution=64)
    ref = features_to_mesh(case.outputs["raw_coords"][:, 1:], raw.float(), resolution=64)
    assert mesh.vertices.dtype == torch.float32 and torch.equal(mesh.faces, ref.faces)


def test_without_colour_channels_the_mesh_has_no_vertex_attributes(case):
    mesh = features_to_mesh(case.outputs["raw_coords"][:, 1:], case.outputs["raw"][:, :53], resolution=64)
    assert mesh.vertex_attrs is None
    assert torch.equal(mesh.faces, case.outputs["faces"])
    assert_close(mesh.vertices, case.outputs["vertices"], atol=1e-4, rtol=0, what="vertices")


def test_bad_inputs_raise_input_error():
    coords = torch.tensor([[1, 2, 3]], dtype=torch.int32)
    with pytest.raises(InputError, match="101"):
        features_to_mesh(coords, torch.rand(1, 100), resolution=8)
    with pytest.raises(InputError, match="resolution"):
        features_to_mesh(coords, torch.rand(1, 101), resolution=3)
    with pytest.raises(InputError, match="coords"):
        features_to_mesh(coords[:, :2], torch.rand(1, 101), resolution=8)
    with pytest.raises(InputError, match="repeated"):
        features_to_mesh(coords[[0, 0]], torch.rand(2, 101), resolution=8)
    with pytest.raises(InputError, match="seal_block"):
        features_to_mesh(coords, torch.rand(1, 101), resolution=8, seal_block=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_official_mesh(case):
    mesh = features_to_mesh(case.outputs["raw_coords"][:, 1:].cuda(), case.outputs["raw"].cuda(), resolution=64)
    assert mesh.vertices.is_cuda
    assert_close(mesh.vertices, case.outputs["vertices"], atol=1e-4, rtol=0, what="vertices")
    assert_close(mesh.vertex_attrs, case.outputs["vertex_attrs"], atol=1e-3, rtol=0, what="vertex_attrs")
    assert torch.equal(mesh.faces.cpu(), case.outputs["faces"])
