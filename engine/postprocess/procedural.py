"""Procedural meshes for tests and benchmarks: a noisy, coloured sphere shaped like a decoder's output.

The decoder hands out ~1 M faces of an irregular closed surface with vertex colours, a few floaters and
sometimes holes. `noisy_sphere` builds the same kind of mesh from a cube grid pushed onto a bumpy sphere, so the
postprocess can be developed and measured before real decoder output exists:

* the six cube faces are made separately, so the seams carry duplicate vertices (welding has work to do);
* the radius has smooth bumps (quadric decimation has shape to keep) plus per-vertex jitter (noise);
* colours are a smooth field of the *direction* only (`color_field`), so a point's true colour is known from
  its direction even after the surface has moved by decimation.
"""
from __future__ import annotations

import numpy as np

from ..assets import Mesh

RADIUS = 0.4  # mean radius; the sphere stays inside [-0.5, 0.5]^3


def color_field(directions: np.ndarray) -> np.ndarray:
    """(N, 3) unit directions -> (N, 3) float32 RGB in [0.1, 0.9], smooth (about 1.5 periods across the sphere)."""
    d = np.asarray(directions, dtype=np.float64)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    r = 0.5 + 0.4 * np.sin(3.0 * x + 1.0 * z + 0.3)
    g = 0.5 + 0.4 * np.sin(2.5 * y - 1.5 * x + 1.1)
    b = 0.5 + 0.4 * np.cos(3.0 * z + 0.7 * y)
    return np.stack([r, g, b], axis=1).astype(np.float32)


def bump_radius(directions: np.ndarray) -> np.ndarray:
    """Smooth radius over the sphere: RADIUS times (1 +- 6 %)."""
    d = np.asarray(directions, dtype=np.float64)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    return RADIUS * (1.0 + 0.04 * np.sin(4.0 * x) * np.cos(3.0 * y) + 0.02 * np.sin(5.0 * z + 2.0 * x))


def noisy_sphere(faces: int = 1_000_000, jitter: float = 2e-4, floaters: int = 0, seed: int = 0) -> Mesh:
    """A closed, bumpy, jittered sphere of about `faces` triangles with `color_field` vertex colours.

    `jitter` is the standard deviation of the radial per-vertex noise (object units). `floaters` adds that many
    tiny separate spheres (about 200 faces each) outside the main one, as the decoder's specks. Seam vertices of
    the six cube faces are duplicated on purpose (the mesh is closed once welded).
    """
    rng = np.random.default_rng(seed)
    n = max(1, int(round(np.sqrt(faces / 12.0))))  # cells per cube-face side: 12 n^2 triangles
    vertices, tris = _cube_sphere_grid(n)
    directions = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    # Jitter must agree on duplicated seam vertices, or welding would leave cracks: draw it per position.
    key = np.round(directions * (4 * n)).astype(np.int64)
    _, first, inverse = np.unique(key[:, 0] * 1_000_003**2 + key[:, 1] * 1_000_003 + key[:, 2],
                                  return_index=True, return_inverse=True)
    noise = rng.standard_normal(first.shape[0])[inverse] * jitter
    radius = bump_radius(directions) + noise
    vertices = directions * radius[:, None]
    colors = color_field(directions)
    parts_v, parts_f, parts_c = [vertices], [tris], [colors]
    count = vertices.shape[0]
    for i in range(floaters):
        small_v, small_f = _cube_sphere_grid(4)
        small_d = small_v / np.linalg.norm(small_v, axis=1, keepdims=True)
        centre = rng.uniform(-1.0, 1.0, 3)
        centre = centre / np.linalg.norm(centre) * 0.47
        parts_v.append(small_d * 0.01 + centre)
        parts_f.append(small_f + count)
        parts_c.append(np.tile(np.array([[1.0, 0.0, 1.0]], np.float32), (small_v.shape[0], 1)))
        count += small_v.shape[0]
    return Mesh(
        vertices=np.concatenate(parts_v).astype(np.float32),
        faces=np.concatenate(parts_f).astype(np.int32),
        vertex_colors=np.concatenate(parts_c).astype(np.float32),
    )


def _cube_sphere_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Six (n+1)^2 grids on the faces of the cube [-1, 1]^3 (not welded), triangles counter-clockwise outside."""
    t = np.linspace(-1.0, 1.0, n + 1)
    # Equal-angle spacing makes the cells on the sphere about the same size.
    t = np.tan(t * np.pi / 4.0)
    u, v = np.meshgrid(t, t, indexing="ij")  # (n+1, n+1)
    u, v = u.ravel(), v.ravel()
    one = np.ones_like(u)
    # (axis frames) each row: the face's outward normal, then two tangents with tangent1 x tangent2 = normal.
    frames = [
        ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
        ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),
        ((0, 1, 0), (0, 0, 1), (1, 0, 0)),
        ((0, -1, 0), (1, 0, 0), (0, 0, 1)),
        ((0, 0, 1), (1, 0, 0), (0, 1, 0)),
        ((0, 0, -1), (0, 1, 0), (1, 0, 0)),
    ]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    a = (i * (n + 1) + j).ravel()  # cell corners (i, j), (i+1, j), (i, j+1), (i+1, j+1)
    b, c, d = a + (n + 1), a + 1, a + (n + 1) + 1
    cell_tris = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])  # (2 n^2, 3)
    verts, tris = [], []
    for k, (nrm, t1, t2) in enumerate(frames):
        p = np.outer(one, nrm) + np.outer(u, t1) + np.outer(v, t2)  # (V, 3)
        verts.append(p)
        tris.append(cell_tris + k * (n + 1) ** 2)
    return np.concatenate(verts), np.concatenate(tris)
