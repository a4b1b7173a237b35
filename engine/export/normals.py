"""Smooth vertex normals for export, continuous across UV seams.

An unwrapped mesh has its vertices split along UV seams; normals computed per split vertex would differ on the
two sides and show the seams as shading creases. Normals are therefore accumulated per *position* (split
vertices at the same place share one normal), area-weighted from the faces around it.
"""
from __future__ import annotations

import numpy as np


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit normals (float32), area-weighted, shared by vertices at identical positions."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    _, first, welded = np.unique(v, axis=0, return_index=True, return_inverse=True)
    welded = welded.reshape(-1)
    face_normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 x area
    corner = welded[f].reshape(-1)  # (3F,) welded vertex of each corner
    acc = np.stack([np.bincount(corner, weights=np.repeat(face_normal[:, c], 3), minlength=first.shape[0])
                    for c in range(3)], axis=1)
    length = np.linalg.norm(acc, axis=1, keepdims=True)
    normal = np.where(length > 0, acc / np.maximum(length, 1e-30), np.array([0.0, 0.0, 1.0]))
    return normal[welded].astype(np.float32)
