"""FlexiCubes on a sparse grid: the generated tables, and meshes whose answer is known."""
from __future__ import annotations

import hashlib
import itertools
import json
import math

import pytest
import torch

from engine.errors import InputError
from engine.flexicubes import CELL_EDGES, CORNER_OFFSETS, dual_tables, flexicubes

# sha256 of json.dumps([dmc_table, num_vd_table, check_table], separators=(",", ":")) of the published FlexiCubes
# tables (nv-tlabs/FlexiCubes tables.py, also vendored by TRELLIS / SAM 3D Objects): dmc_table[case] = 4 rows of
# 7 edge numbers padded with -1, check_table[case] = [problematic, dx, dy, dz, case to use instead].
PUBLISHED_TABLES_SHA256 = "accda6502cebda27ba9cfca36a9cfbcbb4f570498069ac379ca08d8a9b6a9a04"


def published_form() -> str:
    t = dual_tables()
    dmc = [[list(p) + [-1] * (7 - len(p)) for p in ps] + [[-1] * 7] * (4 - len(ps)) for ps in t.patches]
    check = [[1, *n, 255 - c] if n is not None else [0, 0, 0, 0, 0] for c, n in enumerate(t.ambiguous_neighbour)]
    return json.dumps([dmc, t.num_dual_vertices, check], separators=(",", ":"))


def inside_corners(case: int) -> list[int]:
    return [(case >> k) & 1 for k in range(8)]


def crossed_edges(case: int) -> set[int]:
    ins = inside_corners(case)
    return {e for e, (a, b) in enumerate(CELL_EDGES) if ins[a] != ins[b]}


def cube_symmetries():
    """The 48 maps of the cube onto itself, as corner permutations: permute the axes, then mirror some of them."""
    for axes in itertools.permutations(range(3)):
        for mirror in itertools.product((0, 1), repeat=3):
            perm = []
            for k in range(8):
                o = CORNER_OFFSETS[k]
                p = tuple(o[axes[i]] ^ mirror[i] for i in range(3))
                perm.append(CORNER_OFFSETS.index(p))
            yield axes, mirror, perm


def edge_of(a: int, b: int) -> int:
    return next(e for e, pair in enumerate(CELL_EDGES) if set(pair) == {a, b})


# ---------------------------------------------------------------------------------------------------------------
# Tables


def test_cell_edges_join_corners_one_step_apart_four_per_axis_y_edges_pointing_down():
    axes = []
    for a, b in CELL_EDGES:
        diff = [CORNER_OFFSETS[b][i] - CORNER_OFFSETS[a][i] for i in range(3)]
        assert sorted(map(abs, diff)) == [0, 0, 1]
        axis = next(i for i in range(3) if diff[i])
        assert diff[axis] == (-1 if axis == 1 else 1)
        axes.append(axis)
    assert sorted(axes) == [0] * 4 + [1] * 4 + [2] * 4
    assert len({frozenset(p) for p in CELL_EDGES}) == 12


def test_tables_equal_the_published_flexicubes_tables():
    assert hashlib.sha256(published_form().encode()).hexdigest() == PUBLISHED_TABLES_SHA256


def test_every_crossed_edge_belongs_to_exactly_one_patch_of_at_most_seven_edges():
    t = dual_tables()
    assert t.num_dual_vertices[0] == t.num_dual_vertices[255] == 0
    assert max(t.num_dual_vertices) == 4
    for case, patches in enumerate(t.patches):
        edges = [e for p in patches for e in p]
        assert sorted(edges) == sorted(crossed_edges(case)), case
        assert all(1 <= len(p) <= 7 and list(p) == sorted(p) for p in patches), case
        assert len(patches) <= 4


def test_patches_commute_with_the_48_symmetries_of_the_cube():
    t = dual_tables()
    count = 0
    for axes, mirror, perm in cube_symmetries():
        count += 1
        edge_map = [edge_of(perm[a], perm[b]) for a, b in CELL_EDGES]
        for case in range(256):
            image = sum(1 << perm[k] for k in range(8) if (case >> k) & 1)
            mapped = {frozenset(edge_map[e] for e in p) for p in t.patches[case]}
            assert mapped == {frozenset(p) for p in t.patches[image]}, (case, axes, mirror)
            n = t.ambiguous_neighbour[case]
            m = t.ambiguous_neighbour[image]
            assert (n is None) == (m is None), case
            if n is not None:  # the offset to the neighbour maps like a direction
                assert tuple(n[axes[i]] * (-1 if mirror[i] else 1) for i in range(3)) == m
    assert count == 48


def test_problem_cases_are_the_36_with_one_patch_over_an_ambiguous_face_and_their_complement_splits_it():
    t = dual_tables()
    problems = [c for c in range(256) if t.ambiguous_neighbour[c] is not None]
    assert len(problems) == 36
    for case in problems:
        assert sum(inside_corners(case)) in (5, 6)
        axis = next(i for i in range(3) if t.ambiguous_neighbour[case][i])
        side = 1 if t.ambiguous_neighbour[case][axis] > 0 else 0
        face = [k for k in range(8) if CORNER_OFFSETS[k][axis] == side]
        face_edges = {edge_of(a, b) for a, b in itertools.combinations(face, 2) if edge_of_or_none(a, b)}
        assert face_edges <= crossed_edges(case)  # all four face edges crossed: an ambiguous face
        assert any(face_edges <= set(p) for p in t.patches[case])
        assert not any(face_edges <= set(p) for p in t.patches[255 - case])
        assert crossed_edges(255 - case) == crossed_edges(case)


def test_cases_without_an_ambiguous_face_have_the_patches_of_their_complement():
    t = dual_tables()
    checked = 0
    for case in range(256):
        if not has_ambiguous_face(case):
            checked += 1
            assert {frozenset(p) for p in t.patches[case]} == {frozenset(p) for p in t.patches[255 - case]}
    assert checked > 100


def edge_of_or_none(a: int, b: int) -> bool:
    return any(set(pair) == {a, b} for pair in CELL_EDGES)


def has_ambiguous_face(case: int) -> bool:
    ins = inside_corners(case)
    for axis in range(3):
        for side in (0, 1):
            face = [k for k in range(8) if CORNER_OFFSETS[k][axis] == side]
            crossed = [(a, b) for a, b in itertools.combinations(face, 2) if edge_of_or_none(a, b) and ins[a] != ins[b]]
            if len(crossed) == 4:
                return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Meshes


def shell_grid(R: int, inner: float, outer: float, gen: torch.Generator, deform: float = 0.0):
    """Lattice points with sdf < 2 cells of a spherical shell (inside between the radii), in random order."""
    h = 1.0 / R
    axis = torch.arange(R + 1)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    x = grid.double() / R - 0.5
    mid, half = (inner + outer) / 2, (outer - inner) / 2
    sdf = (x.norm(dim=1) - mid).abs() - half
    keep = sdf < 2 * h
    coords, sdf, x = grid[keep], sdf[keep].float(), x[keep].float()
    order = torch.randperm(coords.shape[0], generator=gen)
    coords, sdf, x = coords[order], sdf[order], x[order]
    x = x + deform * h * (2 * torch.rand(x.shape, generator=gen) - 1)
    cells = coords[(coords < R).all(dim=1)]
    weights = 1.5 * torch.randn(cells.shape[0], 21, generator=gen)
    return coords, x, sdf, cells, weights


def edge_uses(faces: torch.Tensor):
    f = faces.long()
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    _, undirected_count = torch.unique(torch.sort(directed, dim=1).values, dim=0, return_counts=True)
    _, directed_count = torch.unique(directed, dim=0, return_counts=True)
    return undirected_count, directed_count


def components(n_vertices: int, faces: torch.Tensor) -> int:
    label = torch.arange(n_vertices)
    f = faces.long()
    pairs = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    while True:
        low = torch.minimum(label[pairs[:, 0]], label[pairs[:, 1]])
        new = label.clone().scatter_reduce_(0, pairs.reshape(-1), low.repeat_interleave(2), reduce="amin")
        new = new[new]
        if torch.equal(new, label):
            return int(torch.unique(label[torch.unique(f)]).numel())
        label = new


def signed_volume(vertices: torch.Tensor, faces: torch.Tensor) -> float:
    v, f = vertices.double(), faces.long()
    return float(torch.linalg.det(torch.stack([v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]], dim=1)).sum() / 6)


def test_spherical_shell_gives_two_closed_spheres_facing_outside_near_the_true_radii():
    gen = torch.Generator().manual_seed(0)
    R, inner, outer = 40, 0.2, 0.36
    coords, x, sdf, cells, weights = shell_grid(R, inner, outer, gen)
    mesh = flexicubes(coords, x, sdf, cells, weights, R)
    V, F = mesh.vertices.shape[0], mesh.faces.shape[0]
    assert mesh.faces.dtype == torch.int32 and mesh.vertex_attrs is None
    undirected, directed = edge_uses(mesh.faces)
    assert bool((undirected == 2).all()), "every edge must be shared by exactly two faces (closed, manifold)"
    assert bool((directed == 1).all()), "neighbouring faces must be oriented consistently"
    assert torch.unique(mesh.faces).numel() == V, "every dual vertex is used"
    assert V - undirected.numel() + F == 4  # two spheres
    assert components(V, mesh.faces) == 2
    radius = mesh.vertices.norm(dim=1)
    h = 1.0 / R
    off = torch.minimum((radius - inner).abs(), (radius - outer).abs())
    assert float(off.max()) < h
    assert int((radius < (inner + outer) / 2).sum()) > 0 and int((radius > (inner + outer) / 2).sum()) > 0
    # Faces turn counter-clockwise seen from outside (the side with sdf > 0): outer sphere out, inner sphere in.
    expected = 4 / 3 * math.pi * (outer**3 - inner**3)
    assert abs(signed_volume(mesh.vertices, mesh.faces) / expected - 1) < 0.05


def test_vertex_attributes_of_an_affine_field_equal_that_field_at_the_mesh_vertices():
    gen = torch.Generator().manual_seed(1)
    R = 24
    coords, x, sdf, cells, weights = shell_grid(R, 0.18, 0.34, gen, deform=0.45)
    A, b = torch.randn(3, 4, generator=gen), torch.randn(4, generator=gen)
    mesh = flexicubes(coords, x, sdf, cells, weights, R, x @ A + b)
    assert mesh.vertex_attrs.shape == (mesh.vertices.shape[0], 4)
    torch.testing.assert_close(mesh.vertex_attrs, mesh.vertices @ A + b, atol=1e-5, rtol=1e-5)


def test_constant_attributes_stay_constant_and_unlisted_points_use_the_defaults():
    gen = torch.Generator().manual_seed(2)
    R = 16
    coords, x, sdf, cells, weights = shell_grid(R, 0.15, 0.3, gen)
    color = torch.rand(3, generator=gen)
    mesh = flexicubes(coords, x, sdf, cells, weights, R, color.expand(coords.shape[0], 3))
    torch.testing.assert_close(mesh.vertex_attrs, color.expand_as(mesh.vertex_attrs), atol=1e-6, rtol=1e-6)
    # Only the inside points listed: every crossed edge now ends at an unlisted (outside, default) point.
    inside = sdf < 0
    default = torch.rand(3, generator=gen)
    mesh = flexicubes(
        coords[inside], x[inside], sdf[inside], cells, weights, R, color.expand(int(inside.sum()), 3),
        absent_attrs=default,
    )
    lo, hi = torch.minimum(color, default), torch.maximum(color, default)
    assert bool(((mesh.vertex_attrs >= lo - 1e-6) & (mesh.vertex_attrs <= hi + 1e-6)).all())
    assert float((mesh.vertex_attrs - color).abs().max()) > 1e-3  # the defaults did take part
    undirected, directed = edge_uses(mesh.faces)
    assert bool((undirected == 2).all()) and bool((directed == 1).all())


def two_ambiguous_cells(gen: torch.Generator, b_case: int):
    """Cell A at (1,1,1) with case 61 (problematic across +x), cell B at (2,1,1) with `b_case`, inside on the
    shared face at A's corners 3, 5 = B's corners 2, 4. Every other lattice point is unlisted (outside)."""
    a_case = 61
    points, values = {}, {}
    for cell, case in (((1, 1, 1), a_case), ((2, 1, 1), b_case)):
        for k, o in enumerate(CORNER_OFFSETS):
            p = (cell[0] + o[0], cell[1] + o[1], cell[2] + o[2])
            inside = (case >> k) & 1
            assert values.setdefault(p, inside) == inside, "the two cases disagree on the shared face"
    for p, inside in values.items():
        magnitude = 0.2 + 0.8 * float(torch.rand(1, generator=gen))
        points[p] = -magnitude if inside else magnitude
    coords = torch.tensor(list(points))
    sdf = torch.tensor(list(points.values()))
    R = 4
    x = coords.float() / R - 0.5
    cells = torch.tensor([[1, 1, 1], [2, 1, 1]])
    return coords, x, sdf, cells, torch.randn(2, 21, generator=gen), R


@pytest.mark.parametrize("b_case", [62, 30])  # 62: problematic across -x (both cells invert); 30: not problematic
def test_adjacent_ambiguous_cells_give_a_closed_manifold_mesh(b_case):
    gen = torch.Generator().manual_seed(3)
    t = dual_tables()
    assert t.ambiguous_neighbour[61] == (1, 0, 0)
    assert (t.ambiguous_neighbour[b_case] == (-1, 0, 0)) == (b_case == 62)
    coords, x, sdf, cells, weights, R = two_ambiguous_cells(gen, b_case)
    mesh = flexicubes(coords, x, sdf, cells, weights, R)
    undirected, directed = edge_uses(mesh.faces)
    assert bool((undirected == 2).all()) and bool((directed == 1).all())
    V = mesh.vertices.shape[0]
    assert V - undirected.numel() + mesh.faces.shape[0] == 2  # one sphere-like blob
    assert components(V, mesh.faces) == 1
    for v in range(V):  # every vertex has one fan of faces around it (a disc), not two touching at a point
        fan = mesh.faces[(mesh.faces == v).any(dim=1)].tolist()
        rim = [tuple(sorted(set(f) - {v})) for f in fan]
        assert components_of_pairs(rim) == 1, f"vertex {v} is not manifold"


def components_of_pairs(pairs: list[tuple[int, int]]) -> int:
    parent: dict[int, int] = {}

    def root(a: int) -> int:
        parent.setdefault(a, a)
        while parent[a] != a:
            a = parent[a]
        return a

    for a, b in pairs:
        parent[root(a)] = root(b)
    return len({root(a) for a in parent})


def test_cost_follows_the_occupied_cells_not_the_grid_resolution():
    """A small ball at resolution 2^20 (a dense grid would hold 10^18 cells) is extracted like one at 2^4."""
    gen = torch.Generator().manual_seed(4)
    small = shell_grid(16, 0.0, 0.3, gen)  # a ball: inner radius 0
    R = 1 << 20
    shift = torch.tensor([123_456, 7, R - 17])  # near the top end of the z axis too
    coords, x, sdf, cells, weights = small
    big = flexicubes(coords + shift, x, sdf, cells + shift, weights, R)
    ref = flexicubes(coords, x, sdf, cells, weights, 16)
    assert torch.equal(big.faces, ref.faces)
    torch.testing.assert_close(big.vertices, ref.vertices, atol=0, rtol=0)


def test_nothing_inside_gives_an_empty_mesh():
    gen = torch.Generator().manual_seed(5)
    coords = torch.randint(0, 9, (50, 3), generator=gen).unique(dim=0)
    n = coords.shape[0]
    outside = torch.rand(n, generator=gen) + 0.1
    no_cells = torch.zeros(0, 3, dtype=torch.long)
    out = flexicubes(coords, torch.rand(n, 3, generator=gen), outside, no_cells, torch.zeros(0, 21), 8,
                     torch.rand(n, 6, generator=gen))
    assert out.vertices.shape == (0, 3) and out.faces.shape == (0, 3) and out.vertex_attrs.shape == (0, 6)
    assert out.faces.dtype == torch.int32 and out.is_empty
    none = flexicubes(no_cells, torch.zeros(0, 3), torch.zeros(0), no_cells, torch.zeros(0, 21), 8)
    assert none.vertices.shape == (0, 3) and none.faces.shape == (0, 3)


def test_malformed_inputs_raise_input_error_naming_the_argument():
    coords = torch.tensor([[1, 1, 1], [2, 2, 2]])
    x, sdf = torch.rand(2, 3), torch.tensor([-1.0, 1.0])
    cells, w = torch.tensor([[1, 1, 1]]), torch.rand(1, 21)
    with pytest.raises(InputError, match="vertex_coords"):
        flexicubes(coords, x, sdf, cells, w, 1)  # out of range for resolution 1
    with pytest.raises(InputError, match="cell_weights"):
        flexicubes(coords, x, sdf, cells, torch.rand(1, 20), 4)
    with pytest.raises(InputError, match="vertex_sdf"):
        flexicubes(coords, x, sdf[:1], cells, w, 4)
    with pytest.raises(InputError, match="absent_sdf"):
        flexicubes(coords, x, sdf, cells, w, 4, absent_sdf=-1.0)
    with pytest.raises(InputError, match="absent_inside"):
        flexicubes(coords, x, sdf, cells, w, 4, absent_inside=torch.zeros(3, 3, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="repeated lattice points"):
        flexicubes(coords[[0, 0]], x, sdf, cells, w, 4)
    with pytest.raises(InputError, match="repeated cells"):
        flexicubes(coords, x, sdf, cells[[0, 0]], torch.rand(2, 21), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_mesh():
    gen = torch.Generator().manual_seed(6)
    R = 32
    coords, x, sdf, cells, weights = shell_grid(R, 0.2, 0.35, gen, deform=0.3)
    attrs = torch.rand(coords.shape[0], 6, generator=gen)
    cpu = flexicubes(coords, x, sdf, cells, weights, R, attrs)
    gpu = flexicubes(*(t.cuda() for t in (coords, x, sdf, cells, weights)), R, attrs.cuda())
    assert torch.equal(gpu.faces.cpu(), cpu.faces)
    torch.testing.assert_close(gpu.vertices.cpu(), cpu.vertices, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gpu.vertex_attrs.cpu(), cpu.vertex_attrs, atol=1e-6, rtol=1e-5)
