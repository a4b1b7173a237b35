"""Gaussian splat PLY writer in the standard 3D Gaussian Splatting (Inria) layout, as upstream SAM 3D saves it.

One `vertex` element, binary little-endian float32, 17 properties in this order:

    x y z | nx ny nz (zeros) | f_dc_0 f_dc_1 f_dc_2 | opacity | scale_0 scale_1 scale_2 | rot_0 rot_1 rot_2 rot_3

stored *before* activation, as splat viewers expect: f_dc = (rgb - 0.5) / C0 with C0 = 0.28209479177387814 (the
degree-0 spherical harmonic), opacity = logit(alpha), scale = log(sigma), rot = the quaternion (w, x, y, z) as
the engine keeps it (not normalised; viewers normalise). Positions stay in the engine's z-up object frame
(upstream writes the PLY unrotated, unlike the GLB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..assets import Gaussians
from ..errors import InputError

SH_C0 = 0.28209479177387814
PLY_FIELDS = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_EPS = 1e-7  # keeps logit and log finite for alpha in {0, 1} and sigma = 0


def gaussian_ply_fields(g: Gaussians) -> np.ndarray:
    """The (N, 17) float32 table the PLY holds (columns in `PLY_FIELDS` order)."""
    n = len(g)
    alpha = np.clip(np.asarray(g.opacity, np.float64).reshape(n), _EPS, 1.0 - _EPS)
    columns = [
        np.asarray(g.xyz, np.float64).reshape(n, 3),
        np.zeros((n, 3)),
        (np.asarray(g.colors, np.float64).reshape(n, 3) - 0.5) / SH_C0,
        np.log(alpha / (1.0 - alpha))[:, None],
        np.log(np.maximum(np.asarray(g.scaling, np.float64).reshape(n, 3), _EPS)),
        np.asarray(g.rotation, np.float64).reshape(n, 4),
    ]
    return np.concatenate(columns, axis=1).astype(np.float32)


def write_gaussian_ply(path: str | Path, gaussians: Gaussians) -> Path:
    """Write `gaussians` to `path` (see the module docstring). Returns the path."""
    path = Path(path)
    if len(gaussians) == 0:
        raise InputError("cannot write a Gaussian PLY with no Gaussians", "check the Gaussian decoder output")
    table = gaussian_ply_fields(gaussians)
    if not np.isfinite(table).all():
        raise InputError("the Gaussians hold NaN or infinite values", "check the Gaussian decoder output")
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {table.shape[0]}"]
                       + [f"property float {name}" for name in PLY_FIELDS] + ["end_header"]) + "\n"
    path.write_bytes(header.encode("ascii") + table.astype("<f4").tobytes())
    return path
