"""Layout refinement: fit an object's translation and scale to its mask and pointmap, rotation kept.

Two steps, each with its own evidence:

1. Silhouette (mask): the object's points (occupied voxel centres, object frame) are splatted through the pose
   into a grid over the mask's neighbourhood. A pattern search over an in-plane shift and a scale about the
   projected origin maximises the soft IoU of the warped silhouette with the mask, ignoring pixels outside the
   picture and pixels of other objects (which may hide this one). The pose found is rendered again exactly and kept
   only if its IoU beats the one before; a few passes of search and render take in the change of perspective.
2. Depth (pointmap): scaling translation and scale together by k moves the object along the viewing rays and
   leaves its silhouette unchanged; k is the median ratio of the observed depth to the fitted visible surface's
   depth over the mask, so a wrong depth is corrected without undoing step 1.

Frames: points and poses in the model camera frame (PyTorch3D: +X left, +Y up, +Z forward, `pose.py`); the
pointmap (H, W, 3) is in that frame, NaN/inf where unknown; intrinsics K in pixels (x right, y down, pixel centres
at +0.5, `intrinsics.py`). The comparison grid has gy x gx cells of `cell` x `cell` pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .pose import Pose

__all__ = ["LayoutFitSettings", "LayoutFit", "fit_layout", "voxel_points"]


@dataclass(frozen=True)
class LayoutFitSettings:
    max_grid: int = 64  # cells along the longer side of the comparison grid
    max_scale_change: float = 1.5  # the silhouette step scales by at most this factor (or its inverse)
    max_shift: float = 0.5  # and shifts by at most this fraction of the mask's size
    max_rounds: int = 24  # pattern-search rounds per pass
    passes: int = 3  # render-and-search passes at most
    depth_range: tuple[float, float] = (0.5, 2.0)  # depth ratios outside this are distrusted and not applied
    min_pixels: int = 16  # fewer mask pixels (or valid pointmap pixels for the depth step): that step is skipped
    min_gain: float = 1e-3  # IoU gain the silhouette step must bring to be kept


@dataclass
class LayoutFit:
    pose: Pose  # the refined pose (the input pose when nothing was found to improve)
    iou_before: float  # silhouette IoU of the points with the mask, model pose (NaN: not measured)
    iou_after: float  # the same with the refined pose
    depth_ratio: float  # k applied along the viewing rays (NaN: the depth step was skipped)


def voxel_points(coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, 4) int voxels (batch, x, y, z) on a `resolution`^3 grid -> (N, 3) float32 cell centres, object frame."""
    return (coords[:, 1:].float() + 0.5) / resolution - 0.5


def fit_layout(
    points_local: torch.Tensor,
    pose: Pose,
    mask: torch.Tensor | np.ndarray,
    pointmap: torch.Tensor | np.ndarray | None,
    intrinsics: torch.Tensor | np.ndarray,
    voxel_size: float,
    ignore: torch.Tensor | np.ndarray | None = None,
    settings: LayoutFitSettings = LayoutFitSettings(),
) -> LayoutFit:
    """Refine `pose` (translation and scale; rotation kept) so the object matches its mask and pointmap.

    points_local: (N, 3) object-frame points covering the object (centres of its voxels or of their surface
    shell, `voxel_points`) whose spacing is `voxel_size` object units; mask: (H, W) in [0, 1]; pointmap:
    (H, W, 3) PyTorch3D camera frame (non-finite where unknown) or None; intrinsics: (3, 3) pixels; ignore: (H, W)
    bool pixels to leave out of the comparison (other objects that may hide this one). Deterministic; an empty
    mask, no point in front of the camera or no valid depth leaves the corresponding step out and the pose as it
    was.
    """
    mask_t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).float().cpu()
    if mask_t.ndim != 2:
        raise InputError(f"fit_layout: the mask must be (H, W), got shape {tuple(mask_t.shape)}")
    h, w = mask_t.shape
    k = torch.as_tensor(np.asarray(intrinsics, dtype=np.float64) if not isinstance(intrinsics, torch.Tensor)
                        else intrinsics).double().cpu()  # fmt: skip
    if k.shape != (3, 3):
        raise InputError(f"fit_layout: intrinsics must be a 3x3 matrix, got shape {tuple(k.shape)}")
    ignore_t = torch.zeros(h, w, dtype=torch.bool) if ignore is None else torch.as_tensor(ignore).bool().cpu()
    if ignore_t.shape != (h, w):
        raise InputError(f"fit_layout: ignore has shape {tuple(ignore_t.shape)}; expected ({h}, {w}) like the mask")
    if points_local.ndim != 2 or points_local.shape[-1] != 3:
        raise InputError(f"fit_layout: points must be (N, 3), got shape {tuple(points_local.shape)}")
    unchanged = LayoutFit(pose, math.nan, math.nan, math.nan)
    if int((mask_t > 0.5).sum()) < settings.min_pixels or points_local.shape[0] == 0:
        return unchanged

    camera = _Camera(k)
    rotated = (points_local.float().cpu() @ pose.rotation_matrix.float().cpu()).double()  # (N, 3), p_cam = s a + t
    scale, translation = float(pose.scale), pose.translation.double().cpu()
    cam = scale * rotated + translation
    if not bool((cam[:, 2] > 1e-6).all()):
        return unchanged  # part of the object is behind the camera: no projection to compare

    # 1. Silhouette: the grid, the model pose's silhouette, then passes of search and exact check. The search warps
    # the silhouette in 2-D, which leaves out the change of perspective; the next pass starts from a fresh render.
    grid = _Grid.around(mask_t, camera.project(cam), settings.max_grid)
    target, weight = grid.mask_cells(mask_t, ignore_t)
    extent = math.sqrt(float(target.sum()))  # the mask's size, cells
    silhouette, depth = grid.splat(camera, cam, voxel_size * scale)
    iou_before = iou_after = _soft_iou(silhouette, target, weight)
    for n in range(settings.passes):
        origin = camera.project(translation[None])[0]  # the pose origin's pixel: the centre of the scaling
        bound, so_far = math.log(settings.max_scale_change), math.log(scale / pose.scale)  # vs the model's scale
        shift, log_scale = _search(silhouette, target, weight, grid.cells_of(origin), extent,
                                   (-bound - so_far, bound - so_far), settings, moments=n == 0)  # fmt: skip
        new_scale = scale * math.exp(log_scale)
        new_translation = translation.clone()
        new_translation[:2] += camera.shift_at_depth(shift * grid.cell, float(translation[2]))
        cam = new_scale * rotated + new_translation
        if not bool((cam[:, 2] > 1e-6).all()):
            break  # never (even partly) behind the camera
        new_silhouette, new_depth = grid.splat(camera, cam, voxel_size * new_scale)
        iou = _soft_iou(new_silhouette, target, weight)
        if iou <= iou_after + settings.min_gain:
            break
        scale, translation, silhouette, depth, iou_after = new_scale, new_translation, new_silhouette, new_depth, iou

    # 2. Depth along the viewing rays from the pointmap (the silhouette stays as it is).
    ratio = math.nan
    if pointmap is not None:
        ratio = _depth_ratio(grid, depth, mask_t, ignore_t, pointmap, settings)
        if math.isfinite(ratio):
            scale, translation = scale * ratio, translation * ratio
    refined = Pose(pose.rotation.clone(), translation.to(pose.translation.dtype), float(scale))
    return LayoutFit(refined, iou_before, iou_after, ratio)


# ---- projection and the comparison grid ------------------------------------------------------------------------


class _Camera:
    """Pinhole projection of PyTorch3D camera points (x left, y up) to pixels (x right, y down)."""

    def __init__(self, k: torch.Tensor):
        self.fx, self.fy, self.cx, self.cy = (float(k[i, j]) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))

    def project(self, cam: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N, 2) pixel coordinates (u right, v down)."""
        z = cam[:, 2].clamp_min(1e-9)
        return torch.stack([self.cx - self.fx * cam[:, 0] / z, self.cy - self.fy * cam[:, 1] / z], dim=1)

    def shift_at_depth(self, pixels: torch.Tensor, depth: float) -> torch.Tensor:
        """(2,) pixel shift (right, down) -> (2,) camera x, y shift at `depth` moving a point by that much."""
        return torch.stack([-pixels[0] * depth / self.fx, -pixels[1] * depth / self.fy]).double()


@dataclass
class _Grid:
    """A box of the picture cut into cells of `cell` x `cell` pixels: (gy, gx) cells from pixel (x0, y0)."""

    x0: int
    y0: int
    cell: int
    gx: int
    gy: int

    @classmethod
    def around(cls, mask: torch.Tensor, pixels: torch.Tensor, max_grid: int) -> _Grid:
        """The box holding the mask and the projected points (clipped to a picture-size margin), plus a margin for
        the search to move in."""
        h, w = mask.shape
        rows, cols = torch.nonzero(mask > 0.5, as_tuple=True)
        u = pixels[:, 0].clamp(-0.5 * w, 1.5 * w)
        v = pixels[:, 1].clamp(-0.5 * h, 1.5 * h)
        lo_x, hi_x = min(float(cols.min()), float(u.min())), max(float(cols.max()) + 1, float(u.max()))
        lo_y, hi_y = min(float(rows.min()), float(v.min())), max(float(rows.max()) + 1, float(v.max()))
        side = max(hi_x - lo_x, hi_y - lo_y)
        margin = 0.35 * side + 2
        lo_x, hi_x, lo_y, hi_y = lo_x - margin, hi_x + margin, lo_y - margin, hi_y + margin
        cell = max(1, math.ceil(max(hi_x - lo_x, hi_y - lo_y) / max_grid))
        x0, y0 = math.floor(lo_x), math.floor(lo_y)
        return cls(x0, y0, cell, math.ceil((hi_x - x0) / cell), math.ceil((hi_y - y0) / cell))

    def cells_of(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., 2) pixel coordinates -> (..., 2) continuous cell coordinates (cell centres at +0.5)."""
        offset = torch.tensor([self.x0, self.y0], dtype=pixels.dtype)
        return (pixels - offset) / self.cell

    def mask_cells(self, mask: torch.Tensor, ignore: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gy, gx) mask coverage per cell and (gy, gx) weight: the share of the cell inside the picture and not
        ignored."""
        h, w = mask.shape
        rows = torch.arange(self.gy * self.cell) + self.y0
        cols = torch.arange(self.gx * self.cell) + self.x0
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        r, c = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        usable = inside & ~ignore[r][:, c]
        covered = mask[r][:, c] * usable
        pool = lambda x: F.avg_pool2d(x[None, None].float(), self.cell)[0, 0]  # noqa: E731
        weight = pool(usable)
        return pool(covered) / weight.clamp_min(1e-6), weight

    def splat(self, camera: _Camera, cam: torch.Tensor, spacing: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (N, 3) filling an object with `spacing` between neighbours -> (gy, gx) silhouette in {0, 1} and
        (gy, gx) nearest depth (inf where empty). Each point covers the cells whose centres lie within its
        footprint, a square 1.3 times a voxel's projected side (a turned voxel's outline reaches further than its
        square; 1.3 balanced the pixels missed and added on ray-cast boxes); points denser than the cells sample
        the silhouette at the cell centres."""
        uv = self.cells_of(camera.project(cam))  # (N, 2)
        z = cam[:, 2]
        half = (0.65 * spacing * camera.fx / z / self.cell).clamp(max=4.0)  # (N,) cells
        reach = max(0, int(math.ceil(float(half.max()) - 0.5)))  # cells away from its own that a footprint reaches
        base = torch.floor(uv).long()  # (N, 2)
        silhouette = torch.zeros(self.gy * self.gx, dtype=torch.float64)
        depth = torch.full((self.gy * self.gx,), math.inf, dtype=torch.float64)
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                cx, cy = base[:, 0] + dx, base[:, 1] + dy
                hit = ((cx + 0.5 - uv[:, 0]).abs() <= half) & ((cy + 0.5 - uv[:, 1]).abs() <= half)
                hit &= (cx >= 0) & (cx < self.gx) & (cy >= 0) & (cy < self.gy)
                index = (cy * self.gx + cx)[hit]
                silhouette[index] = 1.0
                depth.scatter_reduce_(0, index, z[hit], reduce="amin")
        # Close gaps up to two cells wide that a turned voxel lattice leaves between the squares.
        grown = F.max_pool2d(silhouette.view(1, 1, self.gy, self.gx), 3, stride=1, padding=1)
        closed = -F.max_pool2d(-grown, 3, stride=1, padding=1)
        return closed[0, 0], depth.view(self.gy, self.gx)


# ---- the two steps ---------------------------------------------------------------------------------------------


def _soft_iou(silhouette: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    """Weighted IoU of (..., gy, gx) coverages in [0, 1] -> float (or (...,) tensor for a batch)."""
    inter = (torch.minimum(silhouette, target) * weight).sum((-2, -1))
    union = (torch.maximum(silhouette, target) * weight).sum((-2, -1))
    iou = inter / union.clamp_min(1e-9)
    return float(iou) if iou.ndim == 0 else iou


def _search(
    silhouette: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    centre: torch.Tensor,
    extent: float,
    log_scale_range: tuple[float, float],
    settings: LayoutFitSettings,
    moments: bool = True,
) -> tuple[torch.Tensor, float]:
    """Pattern search for the shift (2,) in cells and log-scale about `centre` (cells) that best warps the
    silhouette onto the target. Each round tries the 27 neighbours of the best guess at once (one grid_sample);
    the steps halve when staying put wins."""
    gy, gx = silhouette.shape
    size = torch.tensor([gx, gy], dtype=torch.float64)
    centre_n = 2 * centre / size - 1  # (2,) in grid_sample's normalised coordinates
    xs = (2 * torch.arange(gx) + 1) / gx - 1.0  # (gx,) cell centres, normalised
    ys = (2 * torch.arange(gy) + 1) / gy - 1.0
    moves = torch.cartesian_prod(*[torch.tensor([-1.0, 0.0, 1.0])] * 3).double()  # (27, 3), index 13 = stay
    limit = torch.tensor([settings.max_shift * extent] * 2 + [math.log(settings.max_scale_change)], dtype=torch.float64)
    # Both sides blurred alike: a warp resamples the silhouette bilinearly, which softens a sharp edge, and sharp
    # against sharp would favour the unwarped silhouette over a better-placed one.
    silhouette, target, weight = _blur(silhouette.float()), _blur(target.float()), weight.float()

    def scores_of(candidates: torch.Tensor) -> torch.Tensor:  # (C, 3) -> (C,) soft IoU of each warp
        # Output cell q samples the silhouette at centre + (q - centre - shift) / scale: an affine map.
        inverse = torch.exp(-candidates[:, 2])  # (C,)
        offset = centre_n * (1 - inverse[:, None]) - 2 * candidates[:, :2] / size * inverse[:, None]  # (C, 2)
        inverse, offset = inverse.float(), offset.float()
        at_x = (inverse[:, None] * xs[None] + offset[:, :1])[:, None, :].expand(-1, gy, -1)  # (C, gy, gx)
        at_y = (inverse[:, None] * ys[None] + offset[:, 1:])[:, :, None].expand(-1, -1, gx)
        sample_at = torch.stack([at_x, at_y], dim=-1)  # (C, gy, gx, 2)
        source = silhouette[None, None].float().expand(len(candidates), -1, -1, -1)  # (C, 1, gy, gx)
        warped = F.grid_sample(source, sample_at, align_corners=False)  # (C, 1, gy, gx)
        return _soft_iou(warped[:, 0], target, weight)

    def climb(at: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, float]:
        steps = torch.tensor([0.15 * extent, 0.15 * extent, 0.15], dtype=torch.float64)  # shift x, y (cells), log-scale
        score = float(scores_of(at[None])[0])
        for _ in range(settings.max_rounds):
            candidates = torch.maximum(torch.minimum(at + moves * steps, high), low)  # (27, 3)
            scores = scores_of(candidates)  # (27,)
            pick = int(torch.argmax(scores))  # ties keep the first, so the search is deterministic
            if float(scores[pick]) <= score + 1e-9:
                steps = steps / 2
                if float(steps[0]) < 0.25 and float(steps[2]) < 0.005:
                    break
            else:
                at, score = candidates[pick], float(scores[pick])
        return at, score

    # Climb from "as predicted" and (`moments`) from the warp that matches the silhouette's area and centroid to the
    # mask's (a pose far off has no overlap to climb from); each climb stays within the limits around its start, and
    # the scale within `log_scale_range` overall.
    lo = torch.tensor([-math.inf, -math.inf, log_scale_range[0]], dtype=torch.float64)
    hi = torch.tensor([math.inf, math.inf, log_scale_range[1]], dtype=torch.float64)
    best, best_score = torch.zeros(3, dtype=torch.float64), -math.inf
    starts = [torch.zeros(3, dtype=torch.float64)]
    if moments:
        starts.append(_moment_match(silhouette, target, weight, centre))
    for start in starts:
        start = torch.maximum(torch.minimum(start, hi), lo)
        found, score = climb(start, torch.maximum(start - limit, lo), torch.minimum(start + limit, hi))
        if score > best_score + 1e-9:
            best, best_score = found, score
    return best[:2], float(best[2])


def _blur(image: torch.Tensor) -> torch.Tensor:
    """(gy, gx) -> the same blurred by the binomial kernel [1, 4, 6, 4, 1] / 16 along both axes (zero outside)."""
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=image.dtype) / 16
    out = F.conv2d(image[None, None], kernel.view(1, 1, 1, 5), padding=(0, 2))
    return F.conv2d(out, kernel.view(1, 1, 5, 1), padding=(2, 0))[0, 0]


def _moment_match(silhouette: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, centre: torch.Tensor
                  ) -> torch.Tensor:
    """(3,) shift (cells) and log-scale about `centre` that give the silhouette the mask's area and centroid."""
    ys, xs = torch.meshgrid(torch.arange(target.shape[0]) + 0.5, torch.arange(target.shape[1]) + 0.5, indexing="ij")
    cells = torch.stack([xs, ys], dim=-1).double()  # (gy, gx, 2)
    mass_s, mass_t = silhouette.double(), target.double() * weight  # the silhouette may lie off the picture
    area_s, area_t = float(mass_s.sum()), float(mass_t.sum())
    if area_s <= 0 or area_t <= 0:
        return torch.zeros(3, dtype=torch.float64)
    mean_s = (cells * mass_s[..., None]).sum((0, 1)) / area_s
    mean_t = (cells * mass_t[..., None]).sum((0, 1)) / area_t
    scale = math.sqrt(area_t / area_s)
    shift = mean_t - centre - scale * (mean_s - centre)
    return torch.cat([shift, torch.tensor([math.log(scale)], dtype=torch.float64)])


def _depth_ratio(
    grid: _Grid,
    depth: torch.Tensor,
    mask: torch.Tensor,
    ignore: torch.Tensor,
    pointmap: torch.Tensor | np.ndarray,
    settings: LayoutFitSettings,
) -> float:
    """Median over mask pixels of observed depth / the posed object's nearest depth `depth` (gy, gx) in the same
    cell; NaN when too few pixels have both or the ratio is outside `settings.depth_range`."""
    points = torch.as_tensor(np.asarray(pointmap) if not isinstance(pointmap, torch.Tensor) else pointmap)
    points = points.double().cpu()
    if points.shape != (*mask.shape, 3):
        raise InputError(f"fit_layout: the pointmap has shape {tuple(points.shape)}; expected {(*mask.shape, 3)}")
    observed = points[..., 2]
    rows, cols = torch.nonzero((mask > 0.5) & ~ignore & torch.isfinite(points).all(-1) & (observed > 0), as_tuple=True)
    cy, cx = (rows - grid.y0) // grid.cell, (cols - grid.x0) // grid.cell
    inside = (cx >= 0) & (cx < grid.gx) & (cy >= 0) & (cy < grid.gy)
    predicted = depth[cy[inside], cx[inside]]
    seen = torch.isfinite(predicted)
    if int(seen.sum()) < settings.min_pixels:
        return math.nan
    ratio = float(torch.median(observed[rows[inside][seen], cols[inside][seen]] / predicted[seen]))
    low, high = settings.depth_range
    return ratio if low <= ratio <= high else math.nan
