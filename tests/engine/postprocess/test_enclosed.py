"""Inner walls: the inward surface that interior pruning leaves inside decoder meshes goes; real geometry stays."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.assets import Mesh
from engine.flexicubes import CORNER_OFFSETS
from engine.mesh_extraction import features_to_mesh
from engine.occupancy import keep_surface
from engine.postprocess.cleanup import CleanupOptions, clean_mesh, part_stats
from engine.postprocess.half_edges import HalfEdges
from engine.postprocess.closest import SurfaceQuery
from engine.postprocess.enclosed import ray_winding
from engine.postprocess.procedural import bump_radius, noisy_sphere

SUBDIVISION = 4  # the mesh decoder's two 2x subdivisions: fine resolution = 4 x the occupancy grid


# ------------------------------------------------------------------------------------------------ raw meshes

def pruned_raw_mesh(sdf, coarse: int, seed: int, *, decoder_sdf=None, seal_block: int | None = None) -> Mesh:
    """A raw decoder mesh made the pipeline's way, with an exact sdf in place of the decoder's.

    Occupancy: the coarse cells whose centre has sdf <= 0 (the solid, as the demo targets define it); only the
    surface shell is kept (`keep_surface`); each kept cell becomes 4^3 fine voxels whose 8 corners carry the sdf
    (`decoder_sdf` when given; +1/R, which the extraction's sdf bias takes off again), random deformations,
    FlexiCubes weights and colours. `seal_block` goes to the extraction (None: the official one).
    """
    decoder_sdf = sdf if decoder_sdf is None else decoder_sdf
    gen = torch.Generator().manual_seed(seed)
    fine = coarse * SUBDIVISION
    axis = torch.arange(coarse)
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)  # (C^3, 3)
    solid = sdf((cells.double() + 0.5) / coarse - 0.5) <= 0
    coords = torch.cat([torch.zeros(int(solid.sum()), 1, dtype=torch.long), cells[solid]], 1).int()
    shell = keep_surface(coords)[:, 1:].long()  # (N, 3)
    sub = torch.arange(SUBDIVISION)
    offsets = torch.stack(torch.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)  # (64, 3)
    voxels = (shell[:, None] * SUBDIVISION + offsets).reshape(-1, 3)  # (64 N, 3)
    corners = voxels[:, None] + torch.tensor(CORNER_OFFSETS)  # (M, 8, 3)
    m = voxels.shape[0]
    feats = torch.empty(m, 101)
    feats[:, 0:8] = decoder_sdf(corners.reshape(-1, 3).double() / fine - 0.5).reshape(m, 8).float() + 1.0 / fine
    feats[:, 8:32] = torch.randn(m, 24, generator=gen)
    feats[:, 32:53] = 1.5 * torch.randn(m, 21, generator=gen)
    feats[:, 53:101] = torch.randn(m, 48, generator=gen)
    surface = features_to_mesh(voxels.int(), feats, resolution=fine, seal_block=seal_block)
    return Mesh(surface.vertices.numpy(), surface.faces.numpy().astype(np.int32),
                surface.vertex_attrs[:, :3].numpy().copy())


def sphere_sdf(radius: float, centre=(0.0, 0.0, 0.0)):
    c = torch.tensor(centre, dtype=torch.float64)
    return lambda p: (p - c).norm(dim=-1) - radius


def box_sdf(half, centre=(0.0, 0.0, 0.0)):
    # Sides off the lattice planes: an sdf of exactly 0 on a whole plane of lattice points is a degenerate input.
    h, c = torch.tensor(half, dtype=torch.float64), torch.tensor(centre, dtype=torch.float64)

    def sdf(p):
        q = (p - c).abs() - h
        return q.clamp(min=0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0)
    return sdf


def torus_sdf(major: float, minor: float):
    return lambda p: torch.stack([p[:, :2].norm(dim=-1) - major, p[:, 2]], -1).norm(dim=-1) - minor


SOLIDS = {
    "sphere": sphere_sdf(0.37),
    "box": box_sdf((0.33, 0.27, 0.21)),
    "torus": torus_sdf(0.26, 0.14),
}


# ---------------------------------------------------------------------------------------------------- helpers

def is_closed_and_consistent(mesh: Mesh) -> bool:
    return HalfEdges(torch.from_numpy(mesh.faces.astype(np.int64)), mesh.vertices.shape[0]).all_paired()


def stats(mesh: Mesh) -> SimpleNamespace:
    """`part_stats` as numpy arrays: labels (V,), count, area and volume (P,)."""
    s = part_stats(torch.from_numpy(mesh.vertices.astype(np.float64)), torch.from_numpy(mesh.faces.astype(np.int64)))
    return SimpleNamespace(labels=s.labels.numpy(), count=s.count, area=s.area.numpy(), volume=s.volume.numpy())


def part_faces(mesh: Mesh, which) -> Mesh:
    """The faces of the parts selected by which(stats) -> (P,) bool."""
    s = stats(mesh)
    keep = which(s)[s.labels[mesh.faces[:, 0]]]
    return Mesh(mesh.vertices, mesh.faces[keep])


def triangles(mesh: Mesh) -> np.ndarray:
    """The faces as corner positions, (F, 9), in a canonical order: each face starts at its smallest corner
    (a rotation, so the winding is kept) and the rows are sorted. Equal arrays = the same surface, exactly."""
    t = mesh.vertices[mesh.faces].astype(np.float64)  # (F, 3, 3)
    first = _smallest_corner(t)
    t = t[np.arange(t.shape[0])[:, None], (first[:, None] + np.arange(3)) % 3].reshape(-1, 9)
    return t[np.lexsort(t.T[::-1])]


def _smallest_corner(t: np.ndarray) -> np.ndarray:
    """(F, 3, 3) -> (F,) index of the lexicographically smallest corner of each face."""
    best = np.zeros(t.shape[0], np.int64)
    for k in (1, 2):
        a, b = t[np.arange(t.shape[0]), best], t[:, k]
        diff = a != b
        axis = diff.argmax(axis=1)  # first coordinate that differs
        smaller = b[np.arange(t.shape[0]), axis] < a[np.arange(t.shape[0]), axis]
        best = np.where(diff.any(axis=1) & smaller, k, best)
    return best


def surface_samples(mesh: Mesh, count: int, seed: int) -> np.ndarray:
    """Random points on the faces of `mesh` (uniform barycentrics, uniform over faces)."""
    rng = np.random.default_rng(seed)
    face = rng.integers(0, mesh.faces.shape[0], count)
    b = rng.random((count, 2))
    b = np.where(b.sum(1, keepdims=True) > 1, 1 - b, b)
    t = mesh.vertices[mesh.faces[face]].astype(np.float64)
    return t[:, 0] + b[:, :1] * (t[:, 1] - t[:, 0]) + b[:, 1:] * (t[:, 2] - t[:, 0])


def distance_to(mesh: Mesh, points: np.ndarray) -> np.ndarray:
    """Distance of each point to `mesh` (closest.py: exact on the face it picks, which for a few points near
    the surface is a neighbour of the closest one, so a few distances come out slightly long)."""
    _, _, d2 = SurfaceQuery(mesh.vertices, mesh.faces).closest(points)
    return np.sqrt(d2.numpy())


def combine(*meshes: Mesh) -> Mesh:
    offsets = np.cumsum([0] + [m.vertices.shape[0] for m in meshes[:-1]])
    return Mesh(np.concatenate([m.vertices for m in meshes]),
                np.concatenate([m.faces + o for m, o in zip(meshes, offsets)]).astype(np.int32))


def ball(scale: float, centre=(0.0, 0.0, 0.0), inward: bool = False, seed: int = 0) -> Mesh:
    """A closed bumpy sphere (radius about 0.4 * scale), wound outward unless `inward`."""
    m = noisy_sphere(3000, jitter=1e-3, seed=seed)
    faces = m.faces[:, [0, 2, 1]] if inward else m.faces
    return Mesh((m.vertices * scale + np.asarray(centre, np.float32)).astype(np.float32), faces)


# ------------------------------------------------------------------------------------------- pruned solids

@pytest.mark.parametrize("name", sorted(SOLIDS))
def test_a_pruned_solid_comes_out_as_its_outer_surface_alone(name):
    raw = pruned_raw_mesh(SOLIDS[name], coarse=16, seed=len(name))
    before = stats(raw)
    # What the extraction hands out: the outer surface and, one coarse voxel in, the inward wall (the torus'
    # thin interior leaves it in several pieces).
    walls = int((before.volume < 0).sum())
    assert (before.volume > 0).sum() == 1 and walls >= 1 and before.count == walls + 1
    outer = part_faces(raw, lambda s: s.volume > 0)
    wall = part_faces(raw, lambda s: s.volume < 0)

    out, report = clean_mesh(raw)
    assert report.dropped_walls == walls
    assert stats(out).count == 1 and is_closed_and_consistent(out) and stats(out).volume[0] > 0
    # The wall holds a third to a half of the faces (about half at the official resolution, 4 x 64).
    assert 0.4 < out.faces.shape[0] / raw.faces.shape[0] < 0.8
    # The outer surface is the one kept, untouched (the very same triangles: sampled distance 0) ...
    np.testing.assert_array_equal(triangles(out), triangles(clean_mesh(outer)[0]))
    assert np.median(distance_to(out, surface_samples(outer, 2000, 1))) < 1e-6
    # ... and the wall, more than a fine voxel inside it, is gone.
    assert distance_to(out, surface_samples(wall, 2000, 2)).min() > 1.0 / (16 * SUBDIVISION)

    kept, report = clean_mesh(raw, CleanupOptions(drop_inner_walls=False))
    assert report.dropped_walls == 0 and kept.faces.shape[0] == raw.faces.shape[0]


def test_two_pruned_objects_side_by_side_both_keep_their_outer_surfaces():
    left, right = sphere_sdf(0.2, (-0.24, 0.03, 0.0)), box_sdf((0.17, 0.21, 0.19), (0.24, 0.0, 0.02))
    raw = pruned_raw_mesh(lambda p: torch.minimum(left(p), right(p)), coarse=20, seed=3)
    assert stats(raw).count == 4
    outer = part_faces(raw, lambda s: s.volume > 0)

    out, report = clean_mesh(raw)
    assert report.dropped_walls == 2
    after = stats(out)
    assert after.count == 2 and (after.volume > 0).all() and is_closed_and_consistent(out)
    # The same triangles as the outer surfaces cleaned on their own (FlexiCubes with random weights winds a
    # few faces the wrong way, which clean-up turns back either way).
    np.testing.assert_array_equal(triangles(out), triangles(clean_mesh(outer)[0]))


def cup_sdf(p):
    """A ball with a spherical cavity that a hole from the top opens to the outside."""
    solid = torch.maximum(sphere_sdf(0.44)(p), -sphere_sdf(0.21)(p))
    hole = p[:, :2].norm(dim=-1) - 0.09
    return torch.maximum(solid, torch.where(p[:, 2] > 0, -hole, torch.full_like(solid, -1.0)))


def test_a_thick_shell_open_through_a_hole_keeps_its_cavity():
    # The cup's cavity surface is wound inward and lies inside the outer one, but it is the same part as the
    # outer surface, so it is real.
    raw = pruned_raw_mesh(cup_sdf, coarse=24, seed=5)
    before = stats(raw)
    assert before.count == 2  # the cup (outer + cavity surface) and the wall inside its material
    cup_faces = part_faces(raw, lambda s: s.volume > 0)
    radius = np.linalg.norm(cup_faces.vertices[np.unique(cup_faces.faces)], axis=1)
    assert (radius < 0.25).any()  # the cavity surface is part of it

    out, report = clean_mesh(raw)
    assert report.dropped_walls == 1 and stats(out).count == 1
    np.testing.assert_array_equal(triangles(out), triangles(clean_mesh(cup_faces)[0]))


def test_a_small_hole_in_the_outer_surface_does_not_save_the_wall():
    raw = pruned_raw_mesh(SOLIDS["sphere"], coarse=16, seed=7)
    s = stats(raw)
    outer_part = int(np.argmax(s.volume))
    centre = raw.vertices[raw.faces].mean(axis=1)
    direction = centre / np.linalg.norm(centre, axis=1, keepdims=True)
    cap = (s.labels[raw.faces[:, 0]] == outer_part) & (direction @ np.array([0.6, 0.0, 0.8]) > 0.995)
    assert 0 < cap.sum() < 100
    out, report = clean_mesh(Mesh(raw.vertices, raw.faces[~cap]), CleanupOptions(max_hole_perimeter=0.3))
    assert report.dropped_walls == 1 and report.filled_holes == 1
    assert stats(out).count == 1 and is_closed_and_consistent(out)


def test_an_inside_out_pruned_solid_loses_its_wall_and_is_turned_outward():
    raw = pruned_raw_mesh(SOLIDS["sphere"], coarse=16, seed=8)
    expected, _ = clean_mesh(raw)
    out, report = clean_mesh(Mesh(raw.vertices, raw.faces[:, [0, 2, 1]]))
    assert report.dropped_walls == 1
    assert out.faces.shape[0] == expected.faces.shape[0] and stats(out).volume[0] > 0


# ------------------------------------------------------------------- the sealed extraction (no wall to drop)

@pytest.mark.parametrize("name", sorted(SOLIDS))
def test_the_sealed_extraction_gives_the_outer_surface_alone(name):
    official = pruned_raw_mesh(SOLIDS[name], coarse=16, seed=len(name))
    sealed = pruned_raw_mesh(SOLIDS[name], coarse=16, seed=len(name), seal_block=SUBDIVISION)
    after = stats(sealed)
    assert after.count == 1 and after.volume[0] > 0
    # The very same triangles as the official extraction's outer surface: nothing else formed, nothing moved.
    np.testing.assert_array_equal(triangles(sealed), triangles(part_faces(official, lambda s: s.volume > 0)))
    _, report = clean_mesh(sealed)
    assert report.dropped_walls == 0


def test_a_shell_the_decoder_pierces_closes_over_the_interior_instead_of_opening():
    # The decoder puts a cap of the shell wholly outside (its whole thickness): officially the outer surface runs
    # into the pruned hollow there and joins the inner wall (a hole into the object); sealed, it closes over it.
    radius, coarse = 0.37, 16
    sphere = SOLIDS["sphere"]
    axis = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)

    def pierced(p):
        d = sphere(p)
        cap = (p @ axis) > 0.9 * p.norm(dim=-1)
        return torch.where(cap, d.abs() + 2.0 / coarse, d)

    official = pruned_raw_mesh(sphere, coarse, seed=11, decoder_sdf=pierced)
    sealed = pruned_raw_mesh(sphere, coarse, seed=11, decoder_sdf=pierced, seal_block=SUBDIVISION)
    ball_volume = 4 / 3 * np.pi * radius**3
    before = stats(official)
    assert before.count == 1 and before.volume[0] < 0.6 * ball_volume  # a cup: only the shell is solid
    after = stats(sealed)
    assert after.count == 1 and is_closed_and_consistent(sealed)
    assert 0.85 * ball_volume < after.volume[0] < 1.1 * ball_volume  # a ball with a shallow dent
    # Nothing deeper than the dent: the sealed interior's boundary, one coarse voxel and a half in at most.
    assert np.linalg.norm(sealed.vertices, axis=1).min() > radius - 2.0 / coarse


def test_a_solid_that_fills_the_grid_is_closed_at_its_sides():
    # Objects are scaled to fill the grid: this sphere runs past every side of it, so the decoder's sdf is
    # negative on the grid's boundary, where the official extraction has no cell beyond to close the surface in.
    official = pruned_raw_mesh(sphere_sdf(0.53), coarse=16, seed=12)
    assert not is_closed_and_consistent(official)
    sealed = pruned_raw_mesh(sphere_sdf(0.53), coarse=16, seed=12, seal_block=SUBDIVISION)
    after = stats(sealed)
    assert after.count == 1 and is_closed_and_consistent(sealed) and after.volume[0] > 0
    assert np.abs(sealed.vertices).max() <= 0.5 + 0.5 / 64  # within the grid (and a deformation of half a voxel)
    near_side = np.abs(sealed.vertices[sealed.faces]) > 0.5 - 1.5 / 64  # (F, 3 corners, 3 axes)
    assert near_side.all(axis=1).any(axis=1).sum() > 100  # the caps where the grid cuts the sphere


def test_the_sealed_extraction_keeps_a_cavity_open_to_the_outside():
    official = pruned_raw_mesh(cup_sdf, coarse=24, seed=5)
    sealed = pruned_raw_mesh(cup_sdf, coarse=24, seed=5, seal_block=SUBDIVISION)
    assert stats(sealed).count == 1  # the cup: outer and cavity surface, with no wall inside its material
    np.testing.assert_array_equal(triangles(sealed), triangles(part_faces(official, lambda s: s.volume > 0)))
    assert (np.linalg.norm(sealed.vertices, axis=1) < 0.25).any()


# ------------------------------------------------------------------------------------------ the nesting rule

def test_an_outward_part_nested_inside_another_is_kept_as_a_real_part():
    mesh = combine(ball(1.0, seed=1), ball(0.3, (0.05, -0.04, 0.02), seed=2))
    out, report = clean_mesh(mesh)
    assert report.dropped_walls == 0
    after = stats(out)
    assert after.count == 2 and (after.volume > 0).all()


def test_a_sealed_cavity_wall_goes_and_an_outward_part_inside_the_cavity_stays():
    # outer ball (outward) > sealed cavity (inward) > a small ball floating in the cavity (outward)
    mesh = combine(ball(1.0, seed=3), ball(0.7, inward=True, seed=4), ball(0.3, (0.04, 0.0, -0.05), seed=5))
    out, report = clean_mesh(mesh)
    assert report.dropped_walls == 1
    after = stats(out)
    assert after.count == 2 and (after.volume > 0).all()
    radius = np.linalg.norm(out.vertices, axis=1)
    assert radius.max() > 0.35 and (radius < 0.2).sum() > 0  # the outer ball and the small one
    assert not ((radius > 0.22) & (radius < 0.33)).any()  # nothing left at the cavity's radius


def test_an_inward_part_outside_everything_is_not_a_wall():
    # Side by side, one of them inside out: nothing encloses it, so it is only turned outward.
    mesh = combine(ball(0.5, (-0.25, 0.0, 0.0), seed=6), ball(0.5, (0.25, 0.0, 0.0), inward=True, seed=7))
    out, report = clean_mesh(mesh)
    assert report.dropped_walls == 0
    after = stats(out)
    assert after.count == 2 and (after.volume > 0).all()


# --------------------------------------------------------------------------------------------- winding numbers

def test_ray_winding_counts_nested_and_inverted_closed_surfaces():
    rng = np.random.default_rng(9)
    big, small_inward = ball(1.0, seed=10), ball(0.4, (0.06, 0.02, -0.03), inward=True, seed=11)
    mesh = combine(big, small_inward)
    points = rng.uniform(-0.5, 0.5, (3000, 3))
    small_points = (points - np.array([0.06, 0.02, -0.03])) / 0.4

    def inside_ball(p):
        r = np.linalg.norm(p, axis=1)
        return r < bump_radius(p / r[:, None]), np.abs(r - bump_radius(p / r[:, None])) > 0.01

    in_big, clear_big = inside_ball(points)
    in_small, clear_small = inside_ball(small_points)
    clear = clear_big & clear_small  # away from both surfaces (the tessellation is within 0.01)
    vertices, faces = torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces.astype(np.int64))
    w = ray_winding(vertices, faces, torch.from_numpy(points[clear])).numpy()
    np.testing.assert_array_equal(w, in_big[clear].astype(float) - in_small[clear])
    assert in_small[clear].sum() > 20 and (in_big & ~in_small)[clear].sum() > 200  # every case is exercised

    # Points that belong to a part do not count that part's own faces.
    face_part = torch.from_numpy(np.repeat([0, 1], [big.faces.shape[0], small_inward.faces.shape[0]]))
    w_other = ray_winding(vertices, faces, torch.from_numpy(points[clear]), face_part,
                          torch.ones(int(clear.sum()), dtype=torch.int64)).numpy()
    np.testing.assert_array_equal(w_other, in_big[clear].astype(float))
