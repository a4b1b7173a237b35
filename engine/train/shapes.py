"""Procedural objects as signed distance functions, each in its canonical (object-local) frame.

The canonical frame (the model's object-local frame, ARCHITECTURE §4) is defined here, once:

* axes: the object's own axes, **z up** — the direction that points up when the object stands in its rest
  pose on the ground (a cylinder's or cone's axis, a torus' symmetry axis, a box's third side);
* origin: the **centre of the object's axis-aligned bounding box** (not the bottom);
* unit: the **longest side of that bounding box is exactly 1**, so the object touches two opposite faces of
  [-0.5, 0.5]^3 and lies inside it; its other sides are `Shape.extent` (<= 1);
* boxes are generated with their x side >= their y side (a box seen from any yaw has one canonical form; the
  remaining 180-degree symmetry leaves the occupancy unchanged).

An object is one or two *parts*. A part is one primitive in its own part frame, placed in the canonical frame by
a rotation (identity or lying along x) and an offset. Primitives come in two families, so one formula evaluates
every part of a batch without branching on the shape name:

* `KIND_REVOLVED`: a solid of revolution about z whose profile in the (rho, z) half-plane is the trapezoid
  (a, -h) (b1, -h) (b2, h) (a, h), rounded by r. params = (a, b1, b2, h, r):
  sphere (0, 0, 0, 0, R), cylinder (0, R, R, h, 0), cone (0, R, top, h, 0), capsule (0, 0, 0, h, R),
  torus (R, R, R, 0, r_tube). `a` is 0, or equal to b1 = b2 (torus); nothing else is generated.
* `KIND_BOX`: a box of half sides (hx, hy, hz) rounded by r (outer half sides hx + r, ...). params = (hx, hy, hz,
  r, 0).

Both SDFs are exact outside (the rounding makes the inside a bound), which sphere tracing relies on.

Colour: an object has two colour slots (equal when it has one colour); each part picks slot `colour_below`
under its part-local height `split` and `colour_above` over it (`split = inf`: one slot for the whole part).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

KIND_REVOLVED = 0
KIND_BOX = 1
SHAPE_NAMES = ("box", "sphere", "cylinder", "cone", "torus", "capsule", "union")
PRIMITIVE_NAMES = SHAPE_NAMES[:-1]


@dataclass(frozen=True)
class Part:
    """One primitive placed in its object's canonical frame (column vectors: p_obj = rotation @ p_part + offset)."""

    kind: int  # KIND_REVOLVED or KIND_BOX
    params: tuple[float, float, float, float, float]  # see the module docstring, canonical units
    rotation: tuple[float, ...]  # 9 floats, row-major 3x3, object-from-part
    offset: tuple[float, float, float]  # part origin in the canonical frame
    colour_below: int = 0  # colour slot (0 or 1) of the part below part-local z = split
    colour_above: int = 0  # colour slot above it
    split: float = math.inf  # part-local z of the colour boundary

    def half_extent(self) -> np.ndarray:
        """(3,) half sides of the part's bounding box in its own frame."""
        return _half_extent(self.kind, self.params)


@dataclass(frozen=True)
class Shape:
    """An object in its canonical frame: bounding box centred at 0, longest side exactly 1."""

    name: str  # one of SHAPE_NAMES
    parts: tuple[Part, ...]
    extent: tuple[float, float, float]  # bounding-box sides in the canonical frame, max == 1

    @property
    def colour_slots(self) -> tuple[int, ...]:
        """The colour slots the parts use: (0,) for a one-coloured object, (0, 1) for a two-coloured one."""
        return tuple(sorted({s for p in self.parts for s in (p.colour_below, p.colour_above)}))


# ---- the SDFs (torch, batched) ---------------------------------------------------------------------------------


def revolved_sdf(points: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """KIND_REVOLVED: points (..., 3), params (..., 5) = (a, b1, b2, h, r), broadcast together -> (...)."""
    x, y, z = points.unbind(-1)
    a, b1, b2, h, r = params.unbind(-1)
    # The profile's three edges that are surface: bottom (a, -h)-(b1, -h), top (a, h)-(b2, h), side (b1, -h)-(b2, h).
    rho = torch.sqrt(x * x + y * y)
    d_bottom = (rho - torch.minimum(torch.maximum(rho, a), b1)).square() + (z + h).square()
    d_top = (rho - torch.minimum(torch.maximum(rho, a), b2)).square() + (z - h).square()
    ex, ez = b2 - b1, 2.0 * h
    wx, wz = rho - b1, z + h
    tau = ((wx * ex + wz * ez) / (ex * ex + ez * ez).clamp_min(1e-12)).clamp(0.0, 1.0)
    d_side = (wx - tau * ex).square() + (wz - tau * ez).square()
    dist = torch.sqrt(torch.minimum(torch.minimum(d_bottom, d_top), d_side))
    inside = (a <= 0) & (z.abs() < h) & (rho < b1 + ex * wz / ez.clamp_min(1e-12))
    return torch.where(inside, -dist, dist) - r


def box_sdf(points: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """KIND_BOX: points (..., 3), params (..., 5) = (hx, hy, hz, r, -), broadcast together -> (...)."""
    q = points.abs() - params[..., :3]
    outside = q.clamp_min(0).square().sum(-1).sqrt()
    return outside + q.amax(-1).clamp_max(0) - params[..., 3]


def primitive_sdf(points: torch.Tensor, kind: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Signed distance of part-local points to their primitive, in part-local units.

    points (..., 3), kind (...) int, params (..., 5); all broadcast together. Returns (...). Evaluates both
    families everywhere; `sdf_by_kind` evaluates each only where it applies.
    """
    return torch.where(kind == KIND_BOX, box_sdf(points, params), revolved_sdf(points, params))


def sdf_by_kind(points: torch.Tensor, kind: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Like `primitive_sdf` for Q primitives, each formula evaluated on its own primitives only.

    points (Q, ..., 3), kind (Q,), params (Q, 5) -> (Q, ...); +inf for any other kind (padding).
    """
    out = points.new_full(points.shape[:-1], math.inf)
    extra = (1,) * (points.dim() - 2)
    for k, fn in ((KIND_BOX, box_sdf), (KIND_REVOLVED, revolved_sdf)):
        rows = (kind == k).nonzero()[:, 0]
        if len(rows):
            out[rows] = fn(points[rows], params[rows].reshape(len(rows), *extra, 5))
    return out


def parts_sdf(
    points: torch.Tensor, kind: torch.Tensor, params: torch.Tensor, rotation: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    """Signed distance of canonical points to each part: points (..., N, 3); kind (..., P), params (..., P, 5),
    rotation (..., P, 3, 3) object-from-part, offset (..., P, 3). Returns (..., N, P)."""
    rel = points[..., :, None, :] - offset[..., None, :, :]  # (..., N, P, 3)
    local = torch.einsum("...npi,...pij->...npj", rel, rotation)  # R^T (p - o) as rows: (..., N, P, 3)
    return primitive_sdf(local, kind[..., None, :], params[..., None, :, :])


def shape_tensors(shape: Shape, dtype=torch.float32, device=None) -> dict[str, torch.Tensor]:
    """The parts of one shape as tensors: kind (P,), params (P, 5), rotation (P, 3, 3), offset (P, 3),
    colour_below (P,), colour_above (P,), split (P,)."""
    parts = shape.parts
    return {
        "kind": torch.tensor([p.kind for p in parts], dtype=torch.long, device=device),
        "params": torch.tensor([p.params for p in parts], dtype=dtype, device=device),
        "rotation": torch.tensor([p.rotation for p in parts], dtype=dtype, device=device).reshape(-1, 3, 3),
        "offset": torch.tensor([p.offset for p in parts], dtype=dtype, device=device),
        "colour_below": torch.tensor([p.colour_below for p in parts], dtype=torch.long, device=device),
        "colour_above": torch.tensor([p.colour_above for p in parts], dtype=torch.long, device=device),
        "split": torch.tensor([p.split for p in parts], dtype=dtype, device=device),
    }


def shape_sdf(shape: Shape, points: torch.Tensor) -> torch.Tensor:
    """Signed distance of canonical points (N, 3) to one shape (the union of its parts) -> (N,)."""
    t = shape_tensors(shape, points.dtype, points.device)
    return parts_sdf(points, t["kind"], t["params"], t["rotation"], t["offset"]).amin(-1)


# ---- building shapes -------------------------------------------------------------------------------------------

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_LYING_ALONG_X = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # rotation by +90 deg about y: part z -> object x


def box(hx: float, hy: float, hz: float, bevel: float = 0.0) -> Shape:
    """A box of half sides (hx, hy, hz) (outer, bevel included); x and y are sorted so that x >= y."""
    hx, hy = max(hx, hy), min(hx, hy)
    return canonical("box", [Part(KIND_BOX, (hx - bevel, hy - bevel, hz - bevel, bevel, 0.0), _IDENTITY, (0, 0, 0))])


def sphere() -> Shape:
    return canonical("sphere", [Part(KIND_REVOLVED, (0.0, 0.0, 0.0, 0.0, 0.5), _IDENTITY, (0, 0, 0))])


def cylinder(radius: float, half_height: float) -> Shape:
    return canonical("cylinder", [Part(KIND_REVOLVED, (0.0, radius, radius, half_height, 0.0), _IDENTITY, (0, 0, 0))])


def cone(radius: float, half_height: float, top_radius: float = 0.0) -> Shape:
    """A cone (top_radius 0) or frustum standing on its base."""
    return canonical("cone", [Part(KIND_REVOLVED, (0.0, radius, top_radius, half_height, 0.0), _IDENTITY, (0, 0, 0))])


def torus(major: float, minor: float) -> Shape:
    """A torus lying flat (symmetry axis z): tube centre circle of radius `major`, tube radius `minor`."""
    return canonical("torus", [Part(KIND_REVOLVED, (major, major, major, 0.0, minor), _IDENTITY, (0, 0, 0))])


def capsule(radius: float, half_length: float) -> Shape:
    """An upright capsule: a segment of half length `half_length` along z, rounded by `radius`."""
    return canonical("capsule", [Part(KIND_REVOLVED, (0.0, 0.0, 0.0, half_length, radius), _IDENTITY, (0, 0, 0))])


def canonical(name: str, parts: list[Part]) -> Shape:
    """Move and scale parts (any placement, any unit) into the canonical frame: bounding box centred, longest
    side 1. Colour splits move with their part."""
    lo, hi = _bounds(parts)
    centre, side = (lo + hi) / 2, float((hi - lo).max())
    out = []
    for p in parts:
        params = tuple(float(v) / side for v in p.params)
        offset = tuple(float(v) for v in (np.asarray(p.offset, dtype=np.float64) - centre) / side)
        split = p.split / side if math.isfinite(p.split) else p.split
        out.append(Part(p.kind, params, p.rotation, offset, p.colour_below, p.colour_above, split))
    extent = tuple(float(v) for v in (hi - lo) / side)
    return Shape(name, tuple(out), extent)


def random_shape(rng: np.random.Generator, name: str | None = None, two_colour_probability: float = 0.3) -> Shape:
    """A random shape of the given name (None: uniform over SHAPE_NAMES), canonical, with its colour rule."""
    name = name if name is not None else SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
    if name not in SHAPE_NAMES:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(SHAPE_NAMES)}")
    two = bool(rng.random() < two_colour_probability)
    if name == "union":
        return _random_union(rng, two)
    shape = _random_primitive(rng, name)
    return _two_tone(rng, shape) if two else shape


def _random_primitive(rng: np.random.Generator, name: str) -> Shape:
    u = rng.uniform
    if name == "box":
        bevel = u(0.0, 0.06) if rng.random() < 0.3 else 0.0
        return box(u(0.15, 0.5), u(0.15, 0.5), u(0.12, 0.5), bevel)
    if name == "sphere":
        return sphere()
    if name == "cylinder":
        return cylinder(u(0.15, 0.5), u(0.1, 0.5))
    if name == "cone":
        radius = u(0.2, 0.5)
        top = u(0.15, 0.6) * radius if rng.random() < 0.3 else 0.0
        return cone(radius, u(0.2, 0.5), top)
    if name == "torus":
        major = u(0.3, 0.5)
        return torus(major, u(0.25, 0.6) * major)
    if name == "capsule":
        return capsule(u(0.15, 0.3), u(0.1, 0.5))
    raise ValueError(f"unknown primitive {name!r}; choose one of {', '.join(PRIMITIVE_NAMES)}")


def _two_tone(rng: np.random.Generator, shape: Shape) -> Shape:
    """Colour slot 0 below and slot 1 above a random height of the (single) part."""
    (p,) = shape.parts
    half = float(_half_extent(p.kind, p.params)[2])
    split = float(rng.uniform(-0.4, 0.4)) * half
    part = Part(p.kind, p.params, p.rotation, p.offset, 0, 1, split)
    return Shape(shape.name, (part,), shape.extent)


_UNION_BASES = ("box", "cylinder", "sphere", "cone", "capsule")
_UNION_TOPS = ("box", "cylinder", "sphere", "cone", "capsule", "torus")


def _random_union(rng: np.random.Generator, two_colours: bool) -> Shape:
    """Two primitives, stacked (the second on top of the first) or side by side on a common bottom."""
    base_name = _UNION_BASES[int(rng.integers(len(_UNION_BASES)))]
    base = _random_primitive(rng, base_name).parts[0]
    stacked = bool(rng.random() < 0.6)
    names = _UNION_TOPS if stacked else _UNION_BASES
    if base_name not in ("box", "cylinder"):  # a ring would hang around a rounded or pointed top, not rest on it
        names = tuple(n for n in names if n != "torus")
    other = _random_primitive(rng, names[int(rng.integers(len(names)))]).parts[0]
    size = float(rng.uniform(0.35, 0.8))  # size of the second part relative to the first
    other = Part(other.kind, tuple(v * size for v in other.params), other.rotation, (0, 0, 0))
    lying = (not stacked) and other.kind == KIND_REVOLVED and rng.random() < 0.5
    rotation = _LYING_ALONG_X if lying else _IDENTITY
    hb = base.half_extent()
    ho = np.abs(np.asarray(rotation).reshape(3, 3)) @ other.half_extent()
    if stacked:  # on top, overlapping by a fifth of the smaller height, shifted sideways within the base
        overlap = 0.4 * min(hb[2], ho[2])
        shift = rng.uniform(-0.3, 0.3, size=2) * hb[:2]
        offset = (shift[0], shift[1], hb[2] + ho[2] - overlap)
    else:  # next to it along x, same bottom, overlapping by a fifth of the smaller width
        overlap = 0.4 * min(hb[0], ho[0])
        offset = (hb[0] + ho[0] - overlap, rng.uniform(-0.3, 0.3) * hb[1], ho[2] - hb[2])
    slot = 1 if two_colours else 0
    parts = [
        Part(base.kind, base.params, base.rotation, base.offset, 0, 0),
        Part(other.kind, other.params, rotation, tuple(float(v) for v in offset), slot, slot),
    ]
    return canonical("union", parts)


def _half_extent(kind: int, params) -> np.ndarray:
    a, b1, b2, h, r = params
    if kind == KIND_BOX:
        return np.array([a + h, b1 + h, b2 + h], dtype=np.float64)  # (hx, hy, hz) + r
    radius = max(b1, b2) + r
    return np.array([radius, radius, h + r], dtype=np.float64)


def _bounds(parts: list[Part]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds of parts in the frame they are placed in (exact for axis-permuting rotations)."""
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for p in parts:
        half = np.abs(np.asarray(p.rotation, dtype=np.float64).reshape(3, 3)) @ p.half_extent()
        centre = np.asarray(p.offset, dtype=np.float64)
        lo, hi = np.minimum(lo, centre - half), np.maximum(hi, centre + half)
    return lo, hi
