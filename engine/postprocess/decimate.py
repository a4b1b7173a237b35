"""Decimation to a face count with a quadric-error simplifier (the `fast-simplification` wheel).

Presets name the face counts artists ask for: "low" (~5k, props seen from afar), "medium" (~30k, the default)
and "high" (~150k, close-ups). A plain int is a custom count. The simplifier collapses edges by the quadric
error of the surface and does not carry vertex attributes, so colours are re-sampled from the original mesh
afterwards (see `bake.py`).
"""
from __future__ import annotations

import numpy as np

from ..assets import Mesh
from ..errors import InputError

FACE_PRESETS: dict[str, int] = {"low": 5_000, "medium": 30_000, "high": 150_000}
MIN_FACES = 4  # below a tetrahedron nothing useful is left
RETRY_ABOVE = 1.05  # a careful pass that ends above this many times the target is redone at the default


def resolve_face_count(faces: int | str) -> int:
    """A preset name or a positive int -> the target face count. Raises InputError for anything else."""
    if isinstance(faces, str):
        key = faces.strip().lower()
        if key in FACE_PRESETS:
            return FACE_PRESETS[key]
        if key.isdigit():
            faces = int(key)
        else:
            raise InputError(f"unknown face-count preset {faces!r}",
                             f"use one of {', '.join(FACE_PRESETS)} or a number of faces")
    if isinstance(faces, bool) or not isinstance(faces, (int, np.integer)) or faces < MIN_FACES:
        raise InputError(f"faces={faces!r} is not a usable face count",
                         f"use one of {', '.join(FACE_PRESETS)} or an integer >= {MIN_FACES}")
    return int(faces)


def decimate(mesh: Mesh, target_faces: int, aggressiveness: float = 4.0) -> Mesh:
    """Quadric decimation of `mesh` to about `target_faces` faces (a mesh at or below the target is returned as is).

    `aggressiveness` is the simplifier's `agg`: its error threshold grows like (iteration + 3)^agg, so lower is
    more careful. Its default, 7, leaves outliers up to ~1 % of the diagonal on a noisy sphere; 4 keeps them
    near 0.2 % at the same speed, but on very noisy input it can stop short of the target, in which case the
    decimation is redone at 7. Vertex colours, UVs and texture are dropped (they no longer match); re-sample
    them from the original.
    """
    if mesh.faces.shape[0] <= target_faces:
        return Mesh(vertices=mesh.vertices, faces=mesh.faces, vertex_colors=mesh.vertex_colors)
    vertices, faces = _simplify(mesh, target_faces, aggressiveness)
    if faces.shape[0] > RETRY_ABOVE * target_faces and aggressiveness < 7.0:
        vertices, faces = _simplify(mesh, target_faces, 7.0)
    if faces.shape[0] == 0:
        raise InputError(f"decimating to {target_faces} faces left nothing", "ask for more faces")
    return Mesh(vertices=vertices, faces=faces)


def _simplify(mesh: Mesh, target_faces: int, aggressiveness: float) -> tuple[np.ndarray, np.ndarray]:
    import fast_simplification  # imported here: the wheel is only needed when decimating

    points, faces = fast_simplification.simplify(
        np.ascontiguousarray(mesh.vertices, dtype=np.float64),
        np.ascontiguousarray(mesh.faces, dtype=np.int32),
        target_count=int(target_faces),
        agg=float(aggressiveness),
    )
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    # The simplifier can leave collapsed (repeated-vertex) faces and unused vertices behind.
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    used = np.zeros(points.shape[0], bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    return points[used].astype(np.float32), remap[faces].astype(np.int32)
