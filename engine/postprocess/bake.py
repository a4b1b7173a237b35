"""Baking a base-colour texture onto a low-poly, unwrapped mesh from the full-resolution colours.

For every texel the low-poly mesh covers (`raster.rasterize_uv`), the texel's 3-D point on the low-poly surface
is found from its face and barycentrics, and its colour is read from the *source*:

* the full-resolution mesh's vertex colours at the closest point of that mesh (`closest.SurfaceQuery`),
  interpolated barycentrically;
* and, when Gaussians are given, their colours blended by each Gaussian's density at the point (its opacity
  times its anisotropic Gaussian falloff), over the `GAUSSIAN_NEIGHBOURS` nearest centres. The mesh colour joins
  the blend with the small weight `MESH_PRIOR_WEIGHT`, so Gaussians decide where they cover the surface and the
  mesh colour fills in where they do not.

Texels no face covers are filled by `dilate.dilate` (push-pull). Colours are stored as given (no transfer curve): the
decoder's colours reproduce the image's pixel values, which is what a glTF base-colour texture (sRGB) holds.
All per-texel work is vectorised in torch on the given device; the nearest face centroids and the nearest Gaussians
come from `neighbours.NearestNeighbours` (a grid on CUDA, scipy's k-d tree on the CPU).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from ..assets import Gaussians, Mesh
from ..errors import InputError
from .closest import SurfaceQuery
from .dilate import dilate
from .neighbours import NearestNeighbours
from .raster import rasterize_uv

NEUTRAL_GREY = 0.8  # the colour of a surface with no colour source (Blender's default base colour)
GAUSSIAN_NEIGHBOURS = 8  # Gaussians blended per point
GAUSSIAN_MIN_SIGMA = 2e-3  # object units: floor on each Gaussian axis so flat Gaussians still reach the surface
MESH_PRIOR_WEIGHT = 0.05  # weight of the mesh colour in the Gaussian blend (a Gaussian at its centre weighs 1)
# Texels per chunk. On the GPU one chunk holds a whole 2048^2 texture: each chunk costs thousands of launches and
# ~70 host waits whatever its size (H200, the benchmark's 2.2 M texels: 2^19 -> 0.198 s, 2^22 -> 0.081 s, for
# 0.87 -> 1.56 GiB at the peak). On the CPU smaller chunks bound the host memory.
CHUNK = {"cuda": 1 << 22}
CPU_CHUNK = 1 << 19


def check_gaussians(g: Gaussians) -> None:
    """Raise InputError unless the Gaussians' arrays agree in length and width."""
    n = len(g)
    expected = {"xyz": (n, 3), "colors": (n, 3), "scaling": (n, 3), "rotation": (n, 4)}
    for name, shape in expected.items():
        if np.shape(getattr(g, name)) != shape:
            raise InputError(f"gaussians.{name} is {np.shape(getattr(g, name))}, expected {shape}",
                             "pass the Gaussian decoder's activated attributes")
    if np.size(g.opacity) != n:
        raise InputError(f"gaussians.opacity has {np.size(g.opacity)} values for {n} Gaussians",
                         "pass one opacity per Gaussian")


class ColorSource:
    """Where colours come from: a full-resolution mesh (with vertex colours) and/or Gaussians."""

    def __init__(self, mesh: Mesh | None, gaussians: Gaussians | None = None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.surface = None
        with ThreadPoolExecutor(1) as pool:  # on the CPU the two k-d trees build side by side (scipy frees the GIL)
            blend = None
            if gaussians is not None and len(gaussians) > 0:
                blend = pool.submit(_GaussianBlend, gaussians, self.device)
            if mesh is not None and mesh.vertex_colors is not None:
                self.surface = SurfaceQuery(mesh.vertices, mesh.faces, self.device)
                self.surface_colors = torch.from_numpy(np.asarray(mesh.vertex_colors, np.float32)).to(self.device)
            self.gaussians = None if blend is None else blend.result()

    @property
    def empty(self) -> bool:
        return self.surface is None and self.gaussians is None

    def sample(self, points: torch.Tensor, texel: torch.Tensor | None = None, size: int = 0) -> torch.Tensor:
        """(N, 3) object-space points -> (N, 3) float32 colours in [0, 1].

        When the points are texel centres (`texel`: their flat indices in a size x size texture), one texel per
        2 x 2 block is looked up from scratch and the block's other texels start from its answer (see
        `SurfaceQuery.closest_near`): the same result for a fraction of the nearest-centroid searches.
        """
        points = torch.as_tensor(points, dtype=torch.float32).to(self.device)
        out = torch.full((points.shape[0], 3), NEUTRAL_GREY, dtype=torch.float32, device=self.device)
        if self.surface is not None:
            face, bary = self._closest(points, texel, size)
            out = self.surface.interpolate(self.surface_colors, face, bary)
        if self.gaussians is not None:
            prior = MESH_PRIOR_WEIGHT if self.surface is not None else 1e-6
            out = self.gaussians.blend(points, out, prior)
        return out.clamp(0.0, 1.0)

    def _closest(self, points: torch.Tensor, texel: torch.Tensor | None, size: int):
        if texel is None or points.shape[0] < 16:
            face, bary, _ = self.surface.closest(points)
            return face, bary
        row, col = texel // size, texel % size
        block = (row // 2) * ((size + 1) // 2) + col // 2
        position = torch.arange(points.shape[0], device=self.device)
        first = torch.full(((size + 1) // 2 * ((size + 1) // 2),), points.shape[0], dtype=torch.int64,
                           device=self.device).scatter_reduce(0, block, position, reduce="amin")
        lead = first[block] == position  # one texel per occupied block
        face = torch.empty(points.shape[0], dtype=torch.int64, device=self.device)
        bary = torch.empty((points.shape[0], 3), dtype=torch.float32, device=self.device)
        face[lead], bary[lead], _ = self.surface.closest(points[lead])
        rest = ~lead
        guess = face[first[block[rest]]]
        face[rest], bary[rest], _ = self.surface.closest_near(points[rest], guess)
        return face, bary


def bake_texture(mesh: Mesh, source: ColorSource, size: int,
                 progress: Callable[[float], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bake `source` into a size x size texture over `mesh`'s UVs -> (texture (size, size, 3) uint8, covered mask).

    `mesh` needs `uvs` (origin bottom-left). The returned texture is already dilated into the gutters; the mask
    says which texels a face claimed (inside or within the rasteriser's margin).
    """
    if mesh.uvs is None:
        raise InputError("the mesh has no UVs to bake into", "unwrap it first (engine.postprocess.unwrap)")
    device = source.device
    uvs = torch.from_numpy(np.asarray(mesh.uvs, np.float32)).to(device)
    faces = torch.from_numpy(np.asarray(mesh.faces, np.int64)).to(device)
    vertices = torch.from_numpy(np.asarray(mesh.vertices, np.float32)).to(device)

    cover = rasterize_uv(uvs, faces, size)
    if progress:
        progress(0.2)
    flat = torch.full((size * size, 3), NEUTRAL_GREY, dtype=torch.float32, device=device)
    n = cover.texel.shape[0]
    chunk = CHUNK.get(device.type, CPU_CHUNK)
    for i in range(0, n, chunk):
        corner = faces[cover.face[i:i + chunk]]  # (N, 3)
        bary = cover.bary[i:i + chunk]
        points = vertices.index_select(0, corner[:, 0]) * bary[:, 0:1]  # (N, 3) texel centres on the surface
        points += vertices.index_select(0, corner[:, 1]) * bary[:, 1:2]
        points += vertices.index_select(0, corner[:, 2]) * bary[:, 2:3]
        flat[cover.texel[i:i + chunk]] = source.sample(points, cover.texel[i:i + chunk], size)
        if progress:
            progress(0.2 + 0.7 * min(1.0, (i + chunk) / max(n, 1)))
    covered = torch.zeros(size * size, dtype=torch.bool, device=device)
    covered[cover.texel] = True
    texture = (flat * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).reshape(size, size, 3)
    texture = dilate(texture, covered.reshape(size, size)).cpu().numpy()
    covered = covered.reshape(size, size).cpu().numpy()
    if progress:
        progress(1.0)
    return texture, covered


class _GaussianBlend:
    """Density-weighted colour of the nearest Gaussians (SH degree 0 colours, activated attributes)."""

    def __init__(self, g: Gaussians, device: torch.device):
        self.device = device
        xyz = np.asarray(g.xyz, np.float32)
        self.neighbours = NearestNeighbours(xyz, GAUSSIAN_NEIGHBOURS, device)
        self.xyz = torch.from_numpy(xyz).to(device)
        self.colors = torch.from_numpy(np.asarray(g.colors, np.float32)).clamp(0, 1).to(device)
        self.opacity = torch.from_numpy(np.asarray(g.opacity, np.float32).reshape(-1)).to(device)
        q = torch.from_numpy(np.asarray(g.rotation, np.float32)).to(device)
        rot = _quaternion_to_matrix(q / q.norm(dim=1, keepdim=True).clamp(min=1e-12))  # (N, 3, 3) local->obj
        sigma = torch.from_numpy(np.asarray(g.scaling, np.float32)).to(device)
        inv_sigma = 1.0 / torch.sqrt(sigma ** 2 + GAUSSIAN_MIN_SIGMA ** 2)  # (N, 3)
        # The falloff's exponent is |R^T d / sigma|^2 = d^T P d with P = R diag(1/sigma^2) R^T: 6 numbers per
        # Gaussian to gather per neighbour instead of a rotation and scales (and no batched 3x3 products).
        m = rot * inv_sigma[:, None, :]
        p = m @ m.transpose(1, 2)  # (N, 3, 3)
        self.precision = torch.stack([p[:, 0, 0], p[:, 1, 1], p[:, 2, 2],
                                      2 * p[:, 0, 1], 2 * p[:, 0, 2], 2 * p[:, 1, 2]], dim=1)  # (N, 6)

    def blend(self, points: torch.Tensor, base: torch.Tensor, prior: float) -> torch.Tensor:
        _, idx = self.neighbours.query(points.detach())  # (N, k)
        dx, dy, dz = (points[:, None, :] - self.xyz[idx]).unbind(-1)  # (N, k) each
        p = self.precision[idx].unbind(-1)  # 6 x (N, k)
        exponent = p[0] * dx * dx + p[1] * dy * dy + p[2] * dz * dz + p[3] * dx * dy + p[4] * dx * dz + p[5] * dy * dz
        weight = self.opacity[idx] * torch.exp(-0.5 * exponent)  # (N, k)
        num = (weight[:, :, None] * self.colors[idx]).sum(1) + prior * base
        return num / (weight.sum(1, keepdim=True) + prior)


def _quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (N, 4) as (w, x, y, z) -> rotation matrices (N, 3, 3) (column vectors)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)
