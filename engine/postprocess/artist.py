"""The whole postprocess in one call: raw decoder mesh (+ Gaussians) -> light, clean, unwrapped, textured mesh.

    clean (optional) -> decimate to a face count -> UV unwrap (xatlas) -> bake base colour -> dilate gutters

The pipeline and the CLI call `make_artist_mesh` with the artist's options (face count or preset, texture
size, clean-up on/off). The result carries UVs and the texture array (so Blender builds its material from
arrays, without glTF) and vertex colours sampled the same way as the texture.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..assets import Gaussians, Mesh
from ..errors import InputError
from .bake import ColorSource, bake_texture, check_gaussians
from .cleanup import CleanupOptions, check_mesh, clean_mesh, drop_nonfinite, drop_unused_vertices
from .collapse import RoundGraphs
from .decimate import decimate, resolve_decimator, resolve_face_count
from .unwrap import unwrap

TEXTURE_SIZES = (512, 4096)  # smallest and largest texture side accepted
PADDING = 4  # texels of gutter between charts



@dataclass(frozen=True)
class PostprocessOptions:
    """What the pipeline and CLI pass to `make_artist_mesh` (an artist's choices)."""

    faces: int | str = "medium"  # "low" (~5k), "medium" (~30k), "high" (~150k) or a face count
    texture_size: int = 2048  # side of the base-colour texture, 512..4096
    cleanup: bool = True  # weld, drop floaters, fix winding, fill small holes


# stage -> (start, end) fractions of the whole run, for progress reports; sized after the CPU benchmark
_STAGES = {"clean-up": (0.0, 0.1), "decimate": (0.1, 0.32), "unwrap": (0.32, 0.42), "bake": (0.42, 1.0)}


def make_artist_mesh(
    mesh: Mesh,
    gaussians: Gaussians | None = None,
    faces: int | str = "medium",
    texture_size: int = 2048,
    cleanup: bool = True,
    progress: Callable[[str, float], None] | None = None,
    device: torch.device | str | None = None,
    cleanup_options: CleanupOptions = CleanupOptions(),
    decimator: str = "auto",
    round_graphs: RoundGraphs | None = None,
) -> Mesh:
    """Postprocess a decoder mesh into an artist-ready asset.

    mesh: full-resolution mesh, object-local z-up, with vertex colours (the colour source).
    gaussians: optional; where given, their colours are blended into the texture (see `bake.py`).
    faces: "low" (~5k), "medium" (~30k), "high" (~150k) or a face count; a mesh with fewer faces is kept.
    texture_size: side of the square base-colour texture, 512..4096 texels.
    cleanup: weld, drop floaters, fix winding, fill small holes (`cleanup.py`). Faces touching NaN/inf vertices
        are dropped either way.
    progress: called as progress(stage, fraction of the whole run in [0, 1]); it may raise `Cancelled` to stop.
    device: where the vectorised work runs; default CUDA when available, else CPU.
    decimator: "auto" (torch's parallel edge collapse on CUDA, fast-simplification on CPU, the faster one on
        each), "torch" or "fast-simplification" (see `decimate.py`).
    round_graphs: the torch decimator's CUDA graphs kept across calls (`collapse.RoundGraphs`); None: per call.

    Returns a new Mesh with vertices, faces (split along UV seams), vertex_colors, uvs and texture. Raises
    InputError for an empty mesh, a mesh with nothing finite, or unusable options.
    """
    target = resolve_face_count(faces)
    if isinstance(texture_size, bool) or not isinstance(texture_size, (int, np.integer)) \
            or not TEXTURE_SIZES[0] <= texture_size <= TEXTURE_SIZES[1]:
        raise InputError(f"texture_size={texture_size!r} is out of range",
                         f"use an integer from {TEXTURE_SIZES[0]} to {TEXTURE_SIZES[1]} (e.g. 1024, 2048)")
    check_mesh(mesh)
    if gaussians is not None:
        check_gaussians(gaussians)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    decimator = resolve_decimator(decimator, device)
    with _one_torch_thread(torch.device(device).type == "cpu"):
        return _run(mesh, gaussians, target, texture_size, cleanup, _Progress(progress), device, cleanup_options,
                    decimator, round_graphs)


def _run(mesh, gaussians, target, texture_size, cleanup, report, device, cleanup_options, decimator,
         round_graphs) -> Mesh:
    # 1. clean-up
    report("clean-up", 0.0)
    if cleanup:
        source, _ = clean_mesh(mesh, cleanup_options, device=device)
    else:
        source = _drop_nonfinite(mesh)
    # The colour source indexes the cleaned mesh and the Gaussians (on the CPU k-d trees, built without the GIL)
    # while decimation and unwrapping run: it does not depend on them.
    with ThreadPoolExecutor(1) as pool:
        colors_ready = pool.submit(ColorSource, source, gaussians, device)
        # 2. decimate
        report("decimate", 0.0)
        low = decimate(source, target, device=device, decimator=decimator, round_graphs=round_graphs)
        # 3. unwrap
        report("unwrap", 0.0)
        low, _ = unwrap(low, texture_size, PADDING)
        # 4. bake
        report("bake", 0.0)
        colors = colors_ready.result()
    texture, _ = bake_texture(low, colors, texture_size, progress=lambda f: report("bake", f))
    vertex_colors = None
    if not colors.empty:
        vertex_colors = colors.sample(torch.from_numpy(low.vertices)).cpu().numpy().astype(np.float32)
    report("bake", 1.0)
    return Mesh(vertices=low.vertices, faces=low.faces, vertex_colors=vertex_colors, uvs=low.uvs, texture=texture)


def _drop_nonfinite(mesh: Mesh) -> Mesh:
    v = np.asarray(mesh.vertices, np.float32)
    f = drop_nonfinite(v, np.asarray(mesh.faces, np.int64))
    if f.shape[0] == 0:
        raise InputError("every face of the mesh touches a NaN or infinite vertex", "check the decoder output")
    v, f, c = drop_unused_vertices(v, f, mesh.vertex_colors)
    return Mesh(vertices=v, faces=f.astype(np.int32), vertex_colors=c)


@contextmanager
def _one_torch_thread(active: bool):
    """Run torch's CPU work on one thread for the duration (restored afterwards).

    The postprocess issues thousands of short torch operations; with intra-op threads each one waits for every
    thread to be scheduled, which on a busy machine (Blender, other work) made the bake 3-4x *slower* than one
    thread. The heavy parallel part, the k-d tree queries, uses all cores through scipy's own workers.
    """
    before = torch.get_num_threads()
    if active and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if active and before > 1:
            torch.set_num_threads(before)


class _Progress:
    def __init__(self, callback: Callable[[str, float], None] | None):
        self.callback = callback

    def __call__(self, stage: str, fraction: float) -> None:
        if self.callback is not None:
            start, end = _STAGES[stage]
            self.callback(stage, start + (end - start) * min(max(fraction, 0.0), 1.0))
