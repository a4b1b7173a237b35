"""Batched SDF sphere tracing of `SceneBatch`es: RGB, unshaded albedo, instance ids, depth and pointmap.

Everything runs on the scenes' device (GPU when the caller puts them there) with no per-pixel Python loop:

1. one ray per pixel centre, in the OpenGL camera frame, turned into the world;
2. the ground plane z = 0 is intersected analytically;
3. each ray is clipped against the bounding spheres of the parts; only rays that meet one are traced
   (compacted into a flat list, which is compacted again every few steps as rays converge or leave);
4. sphere tracing against the union of the parts (all parts of the ray's scene at once, in part-local
   coordinates: `p_local = o_local + t * d_local`, precomputed per ray and part);
5. on hits: the winning part gives the object id, the albedo (its colour rule) and the normal (central
   differences of its SDF); the shading is ambient + Lambert from one directional light (no shadows).

Outputs are in the OpenGL camera frame (+X right, +Y up, looking down -Z) like the engine API; the sky is
+inf in the pointmap and the depth (as MoGe marks invalid pixels). Letters: B scenes, H, W pixels, R = H*W rays,
P parts, N traced rays.

`python -m engine.train.render --bench` prints the throughput in views per second.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch

from .scenes import SceneBatch
from .shapes import KIND_BOX, box_sdf, primitive_sdf, revolved_sdf

GROUND = -1  # instance id of the ground plane
SKY = -2  # instance id of the background


@dataclass
class Views:
    image: torch.Tensor  # (B, H, W, 3) float, shaded RGB in [0, 1]
    albedo: torch.Tensor  # (B, H, W, 3) float, unshaded surface colour (sky: its colour)
    instance: torch.Tensor  # (B, H, W) int64: object index (0..K-1), GROUND or SKY
    depth: torch.Tensor  # (B, H, W) float, metres along the viewing axis (-Z), +inf for sky
    pointmap: torch.Tensor  # (B, H, W, 3) float, OpenGL camera frame, metres, +inf for sky
    intrinsics: torch.Tensor  # (B, 3, 3) pixels, OpenCV convention (see scenes.py)
    camera_to_world: torch.Tensor  # (B, 4, 4) OpenGL camera, column vectors

    def masks(self, num_objects: int) -> torch.Tensor:
        """(B, K, H, W) bool, the visible pixels of each object."""
        ids = torch.arange(num_objects, device=self.instance.device)
        return self.instance[:, None] == ids[None, :, None, None]


def render(
    scenes: SceneBatch,
    height: int,
    width: int,
    max_steps: int = 64,
    compact_every: int = 8,
    tolerance: float = 0.01,
) -> Views:
    """Render every scene at height x width. A ray has hit when the SDF is below `tolerance` pixel footprints
    at its distance; rays still marching after `max_steps` count as misses (they see what lies behind)."""
    if height < 1 or width < 1:
        raise ValueError(f"render needs a positive image size, got {height}x{width}")
    num_b, num_r = len(scenes), height * width
    dtype, device = scenes.part_params.dtype, scenes.device
    intrinsics = scenes.intrinsics(height, width)
    fx, fy, cx, cy = intrinsics[:, 0, 0], intrinsics[:, 1, 1], intrinsics[:, 0, 2], intrinsics[:, 1, 2]

    # 1. Rays: unit directions in the camera frame and the world.
    cols = torch.arange(width, dtype=dtype, device=device) + 0.5
    rows = torch.arange(height, dtype=dtype, device=device) + 0.5
    x = ((cols[None, :] - cx[:, None]) / fx[:, None])[:, None, :].expand(num_b, height, width)
    y = (-(rows[None, :] - cy[:, None]) / fy[:, None])[:, :, None].expand(num_b, height, width)
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # (B, H, W, 3)
    dirs_cam = dirs_cam / dirs_cam.norm(dim=-1, keepdim=True)
    cam_rot, eye = scenes.camera_to_world[:, :3, :3], scenes.camera_to_world[:, :3, 3]
    dirs = torch.einsum("bij,bhwj->bhwi", cam_rot, dirs_cam).reshape(num_b, num_r, 3)  # (B, R, 3) world

    # 2. Ground plane.
    dz = dirs[..., 2]
    t_ground = torch.where(dz < -1e-9, -eye[:, 2:3] / dz.clamp_max(-1e-9), torch.full_like(dz, math.inf))  # (B, R)

    # 3. Bounding spheres of the parts -> the (ray, part) pairs to trace and each ray's interval.
    part_rot, part_pos, part_scale = scenes.part_world()  # (B, P, 3, 3), (B, P, 3), (B, P)
    radius = scenes.part_bounding_radius() * part_scale  # (B, P), negative for padding
    eye_rel = eye[:, None, :] - part_pos  # (B, P, 3)
    b_proj = torch.einsum("brj,bpj->brp", dirs, eye_rel)  # (B, R, P)
    disc = b_proj.square() - ((eye_rel.square().sum(-1) - radius.square()) * (radius > 0))[:, None, :]
    root = torch.sqrt(disc.clamp_min(0.0))
    meets = (disc > 0) & (radius[:, None, :] > 0) & (root - b_proj > 0)  # (B, R, P)
    t_near = torch.where(meets, (-b_proj - root).clamp_min(0.0), math.inf).amin(-1)  # (B, R)
    t_far = torch.minimum(torch.where(meets, root - b_proj, -math.inf).amax(-1), t_ground)  # (B, R)
    meets &= (t_near < t_far)[..., None]
    del b_proj, disc, root

    # 4. Sphere tracing of those pairs, in part-local coordinates (p_local = o_local + t * d_local).
    to_local = part_rot.transpose(-1, -2) / part_scale[..., None, None]  # (B, P, 3, 3) world -> part
    origin_local = torch.einsum("bpij,bpj->bpi", to_local, eye_rel)  # (B, P, 3)
    pb, pr, pp = meets.nonzero().unbind(-1)  # (Q,) each, ray-major
    pair_flat = pb * num_r + pr
    first = torch.ones_like(pair_flat, dtype=torch.bool)
    first[1:] = pair_flat[1:] != pair_flat[:-1]
    pair_ray = first.cumsum(0) - 1  # (Q,) index into the traced rays
    ray, scene_of = pair_flat[first], pb[first]  # (N,) flat ray ids and their scenes
    footprint = tolerance / fx  # (B,) hit tolerance per metre of distance
    t_hit, dist_hit = _march(
        pair_ray,
        origin_local[pb, pp],
        torch.einsum("qij,qj->qi", to_local[pb, pp], dirs[pb, pr]),
        scenes.part_kind[pb, pp],
        scenes.part_params[pb, pp],
        part_scale[pb, pp],
        t_near.reshape(-1)[ray],
        t_far.reshape(-1)[ray],
        footprint[scene_of],
        max_steps,
        compact_every,
    )
    del pb, pr, pp, pair_flat, pair_ray, first, meets
    hit = (dist_hit <= footprint[scene_of] * t_hit) & (t_hit < t_far.reshape(-1)[ray])
    ray, scene_of, t_hit = ray[hit], scene_of[hit], t_hit[hit]  # (M,)
    pad = torch.where(scenes.part_object >= 0, 0.0, math.inf).to(dtype)  # (B, P)

    # 5. Surface attributes of the hits, from the part nearest to each hit point.
    d_world = dirs.reshape(-1, 3)[ray]  # (M, 3)
    local = origin_local[scene_of] + t_hit[:, None, None] * torch.einsum("npij,nj->npi", to_local[scene_of], d_world)
    kind, params = scenes.part_kind[scene_of], scenes.part_params[scene_of]  # (M, P), (M, P, 5)
    part = (primitive_sdf(local, kind, params) * part_scale[scene_of] + pad[scene_of]).argmin(-1)  # (M,)
    local = local[torch.arange(len(part), device=device), part]  # (M, 3)
    kind, params = kind.gather(1, part[:, None])[:, 0], params[torch.arange(len(part), device=device), part]
    normal = torch.einsum("nij,nj->ni", part_rot[scene_of, part], _gradient(local, kind, params))
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    colour = scenes.part_colour[scene_of, part]  # (M, 2, 3)
    above = local[:, 2] > scenes.part_split[scene_of, part]
    colour = torch.where(above[:, None], colour[:, 1], colour[:, 0])

    # 6. Compose: sky, then ground, then objects.
    flat = num_b * num_r
    is_ground = torch.isfinite(t_ground).reshape(-1)
    instance = torch.where(is_ground, GROUND, SKY).to(torch.long)
    instance[ray] = scenes.part_object[scene_of, part]
    t_all = torch.where(is_ground, t_ground.reshape(-1), math.inf)
    t_all[ray] = t_hit
    blend = dz.clamp(0.0, 1.0).sqrt()[..., None]  # (B, R, 1): horizon 0 -> zenith 1
    sky_colour = torch.lerp(scenes.sky[:, None, 0], scenes.sky[:, None, 1], blend)  # (B, R, 3)
    ground_colour = scenes.ground_colour[:, None, :].expand(num_b, num_r, 3)
    albedo = torch.where(is_ground[:, None], ground_colour.reshape(flat, 3), sky_colour.reshape(flat, 3))
    albedo[ray] = colour
    normals = torch.zeros(flat, 3, dtype=dtype, device=device)
    normals[:, 2] = 1.0
    normals[ray] = normal
    light = scenes.light_direction[:, None, :].expand(num_b, num_r, 3).reshape(flat, 3)
    ambient = scenes.ambient[:, None].expand(num_b, num_r).reshape(flat, 1)
    shade = ambient + (1 - ambient) * (normals * light).sum(-1, keepdim=True).clamp_min(0.0)
    image = torch.where((instance == SKY)[:, None], albedo, albedo * shade).clamp(0.0, 1.0)
    sky = (instance == SKY).reshape(num_b, height, width)
    pointmap = t_all.reshape(num_b, height, width, 1) * dirs_cam
    pointmap = torch.where(sky[..., None], math.inf, pointmap)
    return Views(
        image=image.reshape(num_b, height, width, 3),
        albedo=albedo.reshape(num_b, height, width, 3),
        instance=instance.reshape(num_b, height, width),
        depth=torch.where(sky, math.inf, -pointmap[..., 2]),
        pointmap=pointmap,
        intrinsics=intrinsics,
        camera_to_world=scenes.camera_to_world,
    )


def _march(pair_ray, origin, direction, kind, params, scale, t, t_far, footprint, max_steps, compact_every):
    """Sphere tracing of N rays against Q (ray, part) pairs.

    pair_ray (Q,) ray of each pair (sorted); origin, direction (Q, 3) part-local; kind (Q,); params (Q, 5);
    scale (Q,) world units per part unit; t, t_far, footprint (N,). Returns the final t and the SDF there, (N,).
    Only parts whose bounding sphere a ray meets are pairs: the others cannot be hit, so leaving them out keeps
    the steps safe. Boxes go first so that each formula runs on a slice of its own.
    """
    order = torch.argsort((kind != KIND_BOX).to(torch.int32), stable=True)
    pair_ray, origin, direction = pair_ray[order], origin[order], direction[order]
    params, scale = params[order], scale[order]
    boxes = int((kind == KIND_BOX).sum())
    t_out, dist_out = t.clone(), torch.full_like(t, math.inf)
    live = torch.arange(len(t), device=t.device)  # (n,) traced-ray index of each live ray
    for step in range(max_steps):
        local = origin + t[pair_ray, None] * direction  # (q, 3)
        d = torch.cat([box_sdf(local[:boxes], params[:boxes]), revolved_sdf(local[boxes:], params[boxes:])]) * scale
        dist = torch.full_like(t, math.inf).scatter_reduce_(0, pair_ray, d, reduce="amin")  # (n,)
        done = dist <= footprint * t
        t = torch.where(done, t, t + dist)
        if (step + 1) % compact_every == 0 or step == max_steps - 1:
            t_out[live], dist_out[live] = t, dist
            keep = ~done & (t < t_far)  # (n,)
            keep_pair = keep[pair_ray]
            boxes = int(keep_pair[:boxes].sum())
            pair_ray = (keep.cumsum(0) - 1)[pair_ray[keep_pair]]
            origin, direction = origin[keep_pair], direction[keep_pair]
            params, scale = params[keep_pair], scale[keep_pair]
            live, t, t_far, footprint = live[keep], t[keep], t_far[keep], footprint[keep]
            if len(live) == 0:
                break
    return t_out, dist_out


def _gradient(points: torch.Tensor, kind: torch.Tensor, params: torch.Tensor, step: float = 1e-3) -> torch.Tensor:
    """Central-difference SDF gradient of one primitive per point: points (M, 3) -> (M, 3)."""
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * step
    probes = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # (M, 6, 3)
    d = primitive_sdf(probes, kind[:, None], params[:, None])  # (M, 6)
    return d[:, :3] - d[:, 3:]


# ---- benchmark ------------------------------------------------------------------------------------------------


def _bench(size: int, batch: int, repeats: int, device: str, max_steps: int, targets: bool) -> None:
    from .dataset import SyntheticData
    from .targets import object_targets

    data = SyntheticData(seed=0, split="train")
    dev = torch.device(device)
    render(data.scene_batch(range(2), dev), size, size, max_steps=max_steps)  # warm-up
    scenes_s = render_s = targets_s = 0.0
    views = objects = 0
    for r in range(repeats):
        t0 = time.perf_counter()
        scenes = data.scene_batch(range(r * batch, (r + 1) * batch), dev)
        t1 = time.perf_counter()
        render(scenes, size, size, max_steps=max_steps)
        _sync(dev)
        t2 = time.perf_counter()
        if targets:
            object_targets(scenes, 64)
            _sync(dev)
        targets_s += time.perf_counter() - t2
        scenes_s, render_s = scenes_s + t1 - t0, render_s + t2 - t1
        views, objects = views + batch, objects + int(scenes.object_valid.sum())
    print(
        f"{views} views of {size}x{size} on {dev} (batch {batch}, {torch.get_num_threads()} threads): "
        f"render {views / render_s:.1f} views/s ({60 * views / render_s:.0f} per minute); "
        f"scene drawing {views / scenes_s:.1f} views/s in one process"
        + (f"; 64^3 targets {objects / targets_s:.1f} objects/s" if targets else "")
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Synthetic-scene renderer of the demo model's data engine.")
    parser.add_argument("--bench", action="store_true", help="measure views per second")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=0, help="scenes per render call (0: 256 on GPU, 16 on CPU)")
    parser.add_argument("--repeats", type=int, default=4, help="timed batches")
    parser.add_argument("--steps", type=int, default=64, help="sphere-tracing steps")
    parser.add_argument("--targets", action="store_true", help="also time the 64^3 per-object targets")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.error("nothing to do; pass --bench")
    batch = args.batch or (256 if args.device.startswith("cuda") else 16)
    _bench(args.size, batch, args.repeats, args.device, args.steps, args.targets)


if __name__ == "__main__":
    main()
