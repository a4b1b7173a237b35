"""Random scenes: a few canonical objects standing on a ground plane, seen from a random camera.

World frame: z up, the ground is the plane z = 0, units are metres. An object is placed by
`p_world = scale * rotation @ p_canonical + position` (column vectors), with `rotation = Rz(yaw) @ R0` where R0 is
the identity (standing in its rest pose) or +90 degrees about x (a cylinder or capsule lying on its side); its
bounding box rests on the ground, so `scale` is the longest side of the object in metres. Where a symmetry makes
the yaw invisible, it is set from the camera (`_observable_yaw`) so that the pose target is unambiguous.

The camera is an OpenGL/Blender camera (+X right, +Y up, looking down -Z); `Camera.camera_to_world` is its 4x4
column-vector matrix (Blender's `matrix_world`). Intrinsics are pinhole, square pixels, principal point at the
image centre, in pixels for a given image size, with pixel (row i, column j) centred at (j + 0.5, i + 0.5):
`u = fx * X / Z + cx`, `v = fy * Y / Z + cy` in the OpenCV camera frame (see engine/frames.py).

A `Scene` is plain Python (drawn from a numpy Generator, cheap); `SceneBatch.collate` pads scenes into tensors
for the renderer and the targets. Letters: B scenes, K objects, P parts (both padded to the batch's maximum).
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .shapes import KIND_BOX, SHAPE_NAMES, Shape, random_shape

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class SceneConfig:
    objects: tuple[int, int] = (1, 4)  # objects per scene, inclusive range (fewer when they do not fit)
    shapes: tuple[str, ...] = SHAPE_NAMES  # drawn uniformly
    size: tuple[float, float] = (0.3, 1.0)  # metres, the longest side of an object
    two_colour_probability: float = 0.3  # of an object having two colours
    lying_probability: float = 0.2  # of a cylinder or capsule lying on its side
    spread: float = 0.35  # metres; the objects stand in a disc of radius spread * sqrt(object count)
    gap: float = 0.05  # metres, least distance between two objects' footprint circles
    elevation_deg: tuple[float, float] = (15.0, 60.0)  # camera elevation above the horizon
    fov_deg: tuple[float, float] = (35.0, 60.0)  # vertical field of view
    fill: tuple[float, float] = (1.05, 1.5)  # camera distance / the one at which the scene just fills the view
    aim_jitter: float = 0.2  # look-at point offset, as a fraction of the scene's bounding radius


@dataclass(frozen=True)
class PlacedObject:
    shape: Shape
    colours: tuple[Colour, Colour]  # RGB in [0, 1] of colour slots 0 and 1 (equal for one colour)
    scale: float  # metres, longest side
    yaw: float  # radians, about world z
    lying: bool  # rotated +90 degrees about x before the yaw
    position: tuple[float, float, float]  # world position of the canonical origin

    def rotation(self) -> np.ndarray:
        """(3, 3) world-from-canonical rotation (column vectors)."""
        return _rz(self.yaw) @ (_RX90 if self.lying else np.eye(3))

    def bounding_radius(self) -> float:
        """Metres: half the diagonal of the object's bounding box."""
        return 0.5 * self.scale * float(np.linalg.norm(self.shape.extent))


@dataclass(frozen=True)
class Camera:
    camera_to_world: tuple[float, ...]  # 16 floats, row-major 4x4, OpenGL/Blender camera, column vectors
    fov_y: float  # radians, vertical field of view

    def matrix(self) -> np.ndarray:
        return np.asarray(self.camera_to_world, dtype=np.float64).reshape(4, 4)

    def intrinsics(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels for an image of this size."""
        f = 0.5 * height / math.tan(0.5 * self.fov_y)
        return f, f, 0.5 * width, 0.5 * height


@dataclass(frozen=True)
class Scene:
    objects: tuple[PlacedObject, ...]
    camera: Camera
    ground_colour: Colour
    sky_horizon: Colour
    sky_zenith: Colour
    light_direction: tuple[float, float, float]  # world, unit, towards the light
    ambient: float  # share of unlit shading, in [0, 1]


def random_scene(
    rng: np.random.Generator,
    config: SceneConfig = SceneConfig(),
    shapes: list[str] | None = None,
    colours: list[tuple[Colour, ...]] | None = None,
) -> Scene:
    """Draw a scene. `shapes` fixes the objects' shape names (their number too); `colours` fixes each object's
    colour slots (one colour: a 1-tuple; the object then gets one colour)."""
    if shapes is not None:
        unknown = [s for s in shapes if s not in SHAPE_NAMES]
        if unknown:
            raise ValueError(f"unknown shapes {unknown}; choose from {', '.join(SHAPE_NAMES)}")
    count = len(shapes) if shapes is not None else int(rng.integers(config.objects[0], config.objects[1] + 1))
    placed: list[PlacedObject] = []
    footprints: list[float] = []  # radius of each placed object's footprint circle
    for i in range(count):
        name = shapes[i] if shapes is not None else config.shapes[int(rng.integers(len(config.shapes)))]
        fixed = colours[i] if colours is not None else None
        two = config.two_colour_probability if fixed is None else float(len(fixed) > 1)
        shape = random_shape(rng, name, two)
        slots = fixed if fixed is not None else (_random_colour(rng), _random_colour(rng))
        slots = (tuple(slots[0]), tuple(slots[-1])) if 1 in shape.colour_slots else (tuple(slots[0]),) * 2
        scale = float(rng.uniform(*config.size))
        yaw = float(rng.uniform(0.0, 2 * math.pi))
        lying = name in ("cylinder", "capsule") and bool(rng.random() < config.lying_probability)
        ex, ey, ez = shape.extent
        ey, ez = (ez, ey) if lying else (ey, ez)  # sides before the yaw
        footprint = 0.5 * scale * math.hypot(ex, ey)
        xy = _free_spot(rng, config.spread * math.sqrt(count), config.gap, footprint, placed, footprints)
        if xy is None:
            continue
        placed.append(PlacedObject(shape, slots, scale, yaw, lying, (xy[0], xy[1], 0.5 * scale * ez)))
        footprints.append(footprint)
    camera = _random_camera(rng, config, placed)
    eye = camera.matrix()[:3, 3]
    placed = [replace(o, yaw=_observable_yaw(o, eye)) for o in placed]
    return Scene(tuple(placed), camera, *_random_environment(rng))


def _observable_yaw(obj: PlacedObject, eye: np.ndarray) -> float:
    """The yaw that makes the pose a function of what the camera sees, where symmetry hides the drawn one:
    upright solids of revolution turn their canonical +x towards the camera; shapes a half turn about the
    vertical maps onto themselves (boxes, one-coloured lying cylinders and capsules) take, of yaw and
    yaw + pi, the one whose +x faces the camera. Neither changes the object's geometry or colours."""
    facing = math.atan2(eye[1] - obj.position[1], eye[0] - obj.position[0])
    if len(obj.shape.parts) != 1:
        return obj.yaw
    part = obj.shape.parts[0]
    if part.kind != KIND_BOX and not obj.lying:
        return facing
    half_turn = part.kind == KIND_BOX or (
        obj.shape.name in ("cylinder", "capsule") and part.colour_below == part.colour_above
    )
    if half_turn and math.cos(obj.yaw - facing) < 0:
        return (obj.yaw + math.pi) % (2 * math.pi)
    return obj.yaw


_ATTEMPTS = 64  # candidate spots per object; the disc grows by half its radius every 16 of them


def _free_spot(rng, spread: float, gap: float, footprint: float, placed: list[PlacedObject], footprints: list[float]):
    """The first of _ATTEMPTS random spots whose footprint circle keeps `gap` from the placed ones, or None."""
    radius = spread * (1 + np.arange(_ATTEMPTS) / 32) * np.sqrt(rng.random(_ATTEMPTS))
    angle = rng.uniform(0.0, 2 * math.pi, _ATTEMPTS)
    xy = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)  # (A, 2)
    if placed:
        others = np.array([o.position[:2] for o in placed])  # (n, 2)
        distance = np.linalg.norm(xy[:, None, :] - others[None], axis=-1)  # (A, n)
        free = (distance >= footprint + np.asarray(footprints) + gap).all(axis=1)
    else:
        free = np.ones(_ATTEMPTS, dtype=bool)
    first = int(np.argmax(free))
    return (float(xy[first, 0]), float(xy[first, 1])) if free[first] else None


def _random_camera(rng, config: SceneConfig, placed: list[PlacedObject]) -> Camera:
    centres = np.array([o.position for o in placed], dtype=np.float64)
    centre = centres.mean(axis=0)
    radius = max(float(np.linalg.norm(c - centre)) + o.bounding_radius() for c, o in zip(centres, placed))
    aim = centre + config.aim_jitter * radius * rng.uniform(-1.0, 1.0, size=3) * np.array([1.0, 1.0, 0.5])
    aim[2] = max(aim[2], 0.0)
    fov = math.radians(rng.uniform(*config.fov_deg))
    distance = radius / math.sin(0.5 * fov) * rng.uniform(*config.fill)
    elevation = math.radians(rng.uniform(*config.elevation_deg))
    azimuth = rng.uniform(0.0, 2 * math.pi)
    eye = aim + distance * np.array(
        [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    )
    return Camera(tuple(float(v) for v in look_at(eye, aim).reshape(-1)), fov)


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) OpenGL camera-to-world matrix at `eye` looking at `target`, world z up, no roll."""
    forward = np.asarray(target, dtype=np.float64) - np.asarray(eye, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -forward, eye
    return m


def _random_environment(rng):
    ground = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.75))
    horizon = colorsys.hsv_to_rgb(rng.uniform(0.5, 0.7), rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0))
    zenith = colorsys.hsv_to_rgb(rng.uniform(0.55, 0.65), rng.uniform(0.2, 0.6), rng.uniform(0.6, 0.95))
    azimuth, elevation = rng.uniform(0.0, 2 * math.pi), math.radians(rng.uniform(30.0, 75.0))
    light = (
        math.cos(elevation) * math.cos(azimuth),
        math.cos(elevation) * math.sin(azimuth),
        math.sin(elevation),
    )
    return tuple(ground), tuple(horizon), tuple(zenith), light, float(rng.uniform(0.25, 0.45))


def _random_colour(rng) -> Colour:
    return tuple(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0)))


def _rz(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


_RX90 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # +90 degrees about x: z -> -y


# ---- batched tensors ------------------------------------------------------------------------------------------


@dataclass
class SceneBatch:
    """Scenes padded into tensors (padding parts have `part_object == -1`, padding objects `object_valid False`)."""

    part_kind: torch.Tensor  # (B, P) int64, KIND_REVOLVED / KIND_BOX
    part_params: torch.Tensor  # (B, P, 5) canonical units
    part_rotation: torch.Tensor  # (B, P, 3, 3) canonical-from-part
    part_offset: torch.Tensor  # (B, P, 3) canonical
    part_object: torch.Tensor  # (B, P) int64, the object a part belongs to, -1 for padding
    part_colour: torch.Tensor  # (B, P, 2, 3) RGB below / above the split
    part_split: torch.Tensor  # (B, P) part-local z of the colour boundary (inf: one colour)
    object_rotation: torch.Tensor  # (B, K, 3, 3) world-from-canonical
    object_position: torch.Tensor  # (B, K, 3) world, metres
    object_scale: torch.Tensor  # (B, K) metres
    object_valid: torch.Tensor  # (B, K) bool
    object_colours: torch.Tensor  # (B, K, 2, 3) RGB of the colour slots
    camera_to_world: torch.Tensor  # (B, 4, 4) OpenGL camera, column vectors
    fov_y: torch.Tensor  # (B,) radians
    ground_colour: torch.Tensor  # (B, 3)
    sky: torch.Tensor  # (B, 2, 3) horizon, zenith
    light_direction: torch.Tensor  # (B, 3) world, towards the light
    ambient: torch.Tensor  # (B,)
    scenes: list[Scene] = field(default_factory=list)  # the plain descriptions, in batch order

    @classmethod
    def collate(cls, scenes: list[Scene], device=None, dtype=torch.float32) -> "SceneBatch":
        if not scenes:
            raise ValueError("SceneBatch.collate needs at least one scene")
        num_b = len(scenes)
        num_k = max(len(s.objects) for s in scenes)
        num_p = max(sum(len(o.shape.parts) for o in s.objects) for s in scenes)
        kind = np.zeros((num_b, num_p), np.int64)
        params = np.zeros((num_b, num_p, 5))
        rot = np.tile(np.eye(3), (num_b, num_p, 1, 1))
        offset = np.zeros((num_b, num_p, 3))
        owner = np.full((num_b, num_p), -1, np.int64)
        colour = np.zeros((num_b, num_p, 2, 3))
        split = np.full((num_b, num_p), np.inf)
        o_rot = np.tile(np.eye(3), (num_b, num_k, 1, 1))
        o_pos = np.zeros((num_b, num_k, 3))
        o_scale = np.ones((num_b, num_k))
        o_valid = np.zeros((num_b, num_k), bool)
        o_colours = np.zeros((num_b, num_k, 2, 3))
        for b, scene in enumerate(scenes):
            p = 0
            for k, obj in enumerate(scene.objects):
                o_rot[b, k], o_pos[b, k], o_scale[b, k], o_valid[b, k] = obj.rotation(), obj.position, obj.scale, True
                o_colours[b, k] = obj.colours
                for part in obj.shape.parts:
                    kind[b, p], params[b, p], offset[b, p], owner[b, p] = part.kind, part.params, part.offset, k
                    rot[b, p] = np.asarray(part.rotation).reshape(3, 3)
                    colour[b, p] = (obj.colours[part.colour_below], obj.colours[part.colour_above])
                    split[b, p] = part.split
                    p += 1

        def t(a, dt=dtype):
            return torch.as_tensor(np.asarray(a), dtype=dt, device=device)

        return cls(
            part_kind=t(kind, torch.long),
            part_params=t(params),
            part_rotation=t(rot),
            part_offset=t(offset),
            part_object=t(owner, torch.long),
            part_colour=t(colour),
            part_split=t(split),
            object_rotation=t(o_rot),
            object_position=t(o_pos),
            object_scale=t(o_scale),
            object_valid=t(o_valid, torch.bool),
            object_colours=t(o_colours),
            camera_to_world=t([s.camera.matrix() for s in scenes]),
            fov_y=t([s.camera.fov_y for s in scenes]),
            ground_colour=t([s.ground_colour for s in scenes]),
            sky=t([(s.sky_horizon, s.sky_zenith) for s in scenes]),
            light_direction=t([s.light_direction for s in scenes]),
            ambient=t([s.ambient for s in scenes]),
            scenes=list(scenes),
        )

    @property
    def device(self) -> torch.device:
        return self.part_params.device

    def __len__(self) -> int:
        return self.part_params.shape[0]

    def intrinsics(self, height: int, width: int) -> torch.Tensor:
        """(B, 3, 3) pinhole matrices in pixels (OpenCV convention, pixel centres at +0.5)."""
        f = 0.5 * height / torch.tan(0.5 * self.fov_y)
        k = torch.zeros(len(self), 3, 3, dtype=f.dtype, device=f.device)
        k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = f, f, 0.5 * width, 0.5 * height, 1.0
        return k

    def part_world(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """World placement of each part, `p_world = scale * rotation @ p_part + position`:
        rotation (B, P, 3, 3), position (B, P, 3), scale (B, P)."""
        k = self.part_object.clamp_min(0)
        o_rot = torch.gather(self.object_rotation, 1, k[:, :, None, None].expand(-1, -1, 3, 3))  # (B, P, 3, 3)
        o_pos = torch.gather(self.object_position, 1, k[:, :, None].expand(-1, -1, 3))  # (B, P, 3)
        o_scale = torch.gather(self.object_scale, 1, k)  # (B, P)
        rotation = o_rot @ self.part_rotation
        position = o_pos + o_scale[..., None] * (o_rot @ self.part_offset[..., None])[..., 0]
        return rotation, position, o_scale

    def part_bounding_radius(self) -> torch.Tensor:
        """(B, P) radius, in part-local units, of a sphere about the part origin holding the part; -1 for padding."""
        a, b1, b2, h, r = self.part_params.unbind(-1)
        box = torch.sqrt((a + h).square() + (b1 + h).square() + (b2 + h).square())
        revolved = torch.sqrt((torch.maximum(b1, b2) + r).square() + (h + r).square())
        radius = torch.where(self.part_kind == KIND_BOX, box, revolved)
        return torch.where(self.part_object >= 0, radius, torch.full_like(radius, -1.0))

    def to(self, device) -> "SceneBatch":
        moved = {
            name: getattr(self, name).to(device) for name in self.__dataclass_fields__ if name != "scenes"
        }
        return SceneBatch(**moved, scenes=self.scenes)

