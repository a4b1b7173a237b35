"""The one axis change of the export formats: the engine's object-local frame is z-up, glTF and OBJ are y-up.

glTF 2.0 fixes +Y up and +Z forward (the front of an asset faces +Z); Blender's OBJ importer assumes the same
by default (forward -Z, up Y, as exported by its OBJ exporter). The engine's frame is z-up with the object in
[-0.5, 0.5]^3. The rotation is -90 degrees about +X: (x, y, z) -> (x, z, -y), the matrix upstream SAM 3D applies
before writing a GLB (`v @ [[1, 0, 0], [0, 0, -1], [0, 1, 0]]`, spec section 8). Blender's glTF and OBJ importers
apply the inverse, so the object comes back z-up exactly as the engine made it. Gaussian PLY files stay z-up
(as upstream writes them).
"""
from __future__ import annotations

import numpy as np

# Row-vector form, as upstream writes it: y_up = z_up @ Z_UP_TO_Y_UP
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=np.float64)


def z_up_to_y_up(points: np.ndarray) -> np.ndarray:
    """(N, 3) points or directions in the engine's z-up frame -> the y-up frame of glTF/OBJ: (x, z, -y)."""
    p = np.asarray(points)
    return np.stack([p[:, 0], p[:, 2], -p[:, 1]], axis=1)


def y_up_to_z_up(points: np.ndarray) -> np.ndarray:
    """Inverse of `z_up_to_y_up`: (x, y, z) y-up -> (x, -z, y) z-up."""
    p = np.asarray(points)
    return np.stack([p[:, 0], -p[:, 2], p[:, 1]], axis=1)
