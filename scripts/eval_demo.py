"""Evaluate demo weights on held-out synthetic images and print the model card's metrics table.

    .venv/bin/python scripts/eval_demo.py --weights DIR [--images 200] [--device auto] [--json results.json]

The images are scenes 0 … N−1 of the data engine's "test" split (`SyntheticData(seed, "test")`, fixed seed, never
seen in training: training uses the "train" split), rendered at --size px with their masks and pointmaps. Every
object with at least --min-pixels visible pixels is reconstructed through `Pipeline.reconstruct` (all objects of
an image in one call, the image's index as the seed, the given pointmap and intrinsics) and scored:

* voxel IoU (object frame): the SS decoder's occupancy (`raw["coords_original"]`, every cell with logit > 0,
  before the interior is pruned) against the true solid occupancy on the same 64³ grid;
* mask IoU: the placed mesh (vertices through the predicted pose into the camera, triangles rasterised) against
  the object's mask. Pixels where the truth shows another object are left out of the projection, so an object
  is not penalised for the part of it another one hides;
* colour error: mean absolute RGB difference (0–1) between the mesh's vertex colours and the true surface
  colour of the object at those vertices (the colour of its nearest part, `targets_latent.object_fields`).

By default the raw decoder mesh is scored (the textured mesh's colours are baked from it; the postprocess costs
about 3 s per object); --postprocess scores the clean, decimated mesh the pipeline hands out, whose vertex
colours are sampled like its texture (each object's record then holds the raw mesh's colour error too,
`colour_error_raw`, and the summary its median).

An object whose reconstruction fails counts as IoU 0 and colour error 1. The table gives medians (the issue's
targets), means and per-shape medians.

Diagnosis: --given-voxels runs stage 2 on each object's true surface voxels instead of stage 1's (stage 2's colour
alone; the mask IoU then measures the pose with the true shape); --true-pose scores the mask IoU with the true pose
(the predicted shape's share); --swap-rb swaps the picture's red and blue channels and scores against
swapped truth colours, so a model that reads colours from the picture scores about the same, and one that ignores
them does worse. --given-latents ENCODER goes one step further: stage 2 is replaced by the SLAT encoder's latent of
the true object on its true voxels (a training checkpoint's `slat_encoder`, e.g. weights/demo/training/slat_encoder.pt),
so the colour error is the decoders' own: the floor that no stage-2 flow can go below.

Layout: --refine-layout on|off|default runs the pipeline's layout fit (`engine/layout_fit.py`: each pose's
translation and scale fitted to its mask and the pointmap) or not, or as the weights' configuration says; refined
objects also record the mask IoU with the model's own pose (`mask_iou_before_layout`) and the fit's figures.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import EngineError  # noqa: E402
from engine.frames import p3d_to_opencv  # noqa: E402
from engine.pipeline import Pipeline  # noqa: E402
from engine.pose import Pose  # noqa: E402
from engine.postprocess import PostprocessOptions  # noqa: E402
from engine.postprocess.raster import rasterize_uv  # noqa: E402
from engine.train.dataset import DataConfig, SyntheticData  # noqa: E402
from engine.train.export import open_demo  # noqa: E402
from engine.sparse.tensor import SparseTensor  # noqa: E402
from engine.train.slat_encoder import PRESETS as slat_encoder_presets  # noqa: E402
from engine.train.slat_encoder import SlatEncoder  # noqa: E402
from engine.train.targets_latent import lattice_points, object_fields, voxel_inputs  # noqa: E402

TARGETS = {"voxel_iou": (">=", 0.6), "mask_iou": (">=", 0.8), "colour_error": ("<=", 0.1)}
LABELS = {"voxel_iou": "voxel IoU (object frame)", "mask_iou": "mask IoU (placed mesh)",
          "colour_error": "colour error (mesh, RGB 0-1)"}  # fmt: skip
FAILED = {"voxel_iou": 0.0, "mask_iou": 0.0, "colour_error": 1.0}
REFINE_LAYOUT = {"on": True, "off": False, "default": None}  # --refine-layout -> reconstruct(refine_layout=...)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, type=Path, help="a demo weights folder (export.py)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="data seed of the held-out set")
    parser.add_argument("--size", type=int, default=160, help="image side, px")
    parser.add_argument("--min-pixels", type=int, default=24, help="smaller objects are not scored")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quality", default="default", help="fast, default or high")
    parser.add_argument("--postprocess", action="store_true",
                        help="score the clean, decimated, textured mesh (about 3 s per object on the H200 "
                             "machine) instead of the raw decoder mesh its texture is baked from")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write per-object records and the summary here")
    parser.add_argument("--steps1", type=int, default=None, help="override the stage-1 sampler's steps")
    parser.add_argument("--cfg1", type=float, default=None, help="override the stage-1 guidance strength")
    parser.add_argument("--steps2", type=int, default=None, help="override the stage-2 sampler's steps")
    parser.add_argument("--cfg2", type=float, default=None, help="override the stage-2 guidance strength")
    parser.add_argument("--rescale2", type=float, default=None, help="override the stage-2 sampler's time warp")
    parser.add_argument("--given-voxels", action="store_true",
                        help="stage 2 alone, on the true surface voxels (scores colour only)")  # fmt: skip
    parser.add_argument("--given-latents", type=Path, default=None, metavar="ENCODER",
                        help="stage 2 replaced by this SLAT encoder's latent of the true object, on the true "
                             "voxels (the decoders' own colour error)")  # fmt: skip
    parser.add_argument("--true-pose", action="store_true",
                        help="score the mask IoU with the true pose (the shape's share of the error)")
    parser.add_argument("--swap-rb", action="store_true", help="swap red and blue in the picture and in the truth")
    parser.add_argument("--refine-layout", choices=sorted(REFINE_LAYOUT), default="default",
                        help="fit each pose to its mask and pointmap before stage 2 (default: as the weights' "
                             "configuration says)")  # fmt: skip
    args = parser.parse_args(argv)

    config, provider, identity = open_demo(args.weights)
    config = replace(config, stage1=_sampler(config.stage1, args.steps1, args.cfg1),
                     stage2=_sampler(config.stage2, args.steps2, args.cfg2, args.rescale2))  # fmt: skip
    kind = GivenLatentsPipeline if args.given_latents else GivenVoxelsPipeline if args.given_voxels else Pipeline
    pipe = kind(config, provider, device=args.device, weights_id=identity)
    if args.given_latents is not None:
        pipe.load_encoder(args.given_latents)
    if pipe.device.type == "cuda":  # cuDNN attention plans every new voxel count anew (~10 ms each)
        torch.backends.cuda.enable_cudnn_sdp(False)
    resolution = config.mesh_decoder.trunk.resolution
    data = SyntheticData(args.seed, "test", DataConfig(height=args.size, width=args.size, resolution=resolution))
    records = []
    start = time.perf_counter()
    for i in range(args.images):
        records += evaluate_image(pipe, data, i, args.min_pixels, args.quality,
                                  PostprocessOptions() if args.postprocess else None, args.swap_rb,
                                  args.true_pose, REFINE_LAYOUT[args.refine_layout])  # fmt: skip
        if (i + 1) % 20 == 0 or i + 1 == args.images:
            print(f"{i + 1}/{args.images} images, {len(records)} objects, {time.perf_counter() - start:.0f} s",
                  flush=True)  # fmt: skip
    summary = summarize(records)
    summary.update(images=args.images, seconds=time.perf_counter() - start, weights=str(args.weights),
                   quality=args.quality, postprocess=args.postprocess, device=str(pipe.device),
                   given_voxels=args.given_voxels or args.given_latents is not None,
                   given_latents=None if args.given_latents is None else str(args.given_latents),
                   swap_rb=args.swap_rb, true_pose=args.true_pose,
                   refine_layout=args.refine_layout,
                   refine_layout_applied=(config.refine_layout if REFINE_LAYOUT[args.refine_layout] is None
                                          else REFINE_LAYOUT[args.refine_layout]),
                   stage1=asdict(config.stage1),
                   stage2=asdict(config.stage2))  # fmt: skip
    print(table(summary))
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "objects": records}, indent=1) + "\n")
    return summary


def evaluate_image(pipe: Pipeline, data: SyntheticData, index: int, min_pixels: int, quality: str,
                   postprocess: PostprocessOptions | None = None, swap_rb: bool = False,
                   true_pose: bool = False, refine_layout: bool | None = None) -> list[dict]:  # fmt: skip
    batch = data.batch([index], device=pipe.device)  # rendered and scored where the pipeline runs
    views, targets, scenes = batch.views, batch.targets, batch.scenes
    masks = batch.masks[0]  # (K, H, W)
    keep = [k for k in range(masks.shape[0]) if targets.valid[0, k] and int(masks[k].sum()) >= min_pixels]
    if not keep:
        return []
    image = np.round(views.image[0].cpu().numpy() * 255).astype(np.uint8)
    if swap_rb:
        image = np.ascontiguousarray(image[..., ::-1])
    if isinstance(pipe, GivenVoxelsPipeline):
        pipe.truth = [targets.occupancy[0, k] for k in keep]
        pipe.truth_objects = (scenes, keep)
    pointmap = views.pointmap[0].cpu().numpy()
    k_matrix = views.intrinsics[0].cpu().numpy()
    mask_arrays = [masks[k].cpu().numpy() for k in keep]
    try:
        result = pipe.reconstruct(image, mask_arrays, pointmap=pointmap, intrinsics=k_matrix, seed=index,
                                  quality=quality, outputs=("mesh",), postprocess=postprocess,
                                  refine_layout=refine_layout)  # fmt: skip
        objects = result.objects
    except EngineError:  # one object without a shape fails the call: score the objects one by one
        objects = []
        for k, m in zip(keep, mask_arrays):
            if isinstance(pipe, GivenVoxelsPipeline):
                pipe.truth = [targets.occupancy[0, k]]
                pipe.truth_objects = (scenes, [k])
            try:
                objects += pipe.reconstruct(image, [m], pointmap=pointmap, intrinsics=k_matrix, seed=index,
                                            quality=quality, outputs=("mesh",), postprocess=postprocess,
                                            refine_layout=refine_layout).objects  # fmt: skip
            except EngineError:
                objects.append(None)
    records = []
    for k, found in zip(keep, objects):
        record = {"image": index, "object": k, "shape": targets.names[0][k], "pixels": int(masks[k].sum())}
        if found is None or found.mesh is None or len(found.mesh.faces) == 0:
            record.update(FAILED, failed=True)
        else:
            others = (views.instance[0] >= 0) & (views.instance[0] != k)
            pose = targets.pose(0, k) if true_pose else found.pose
            record.update(
                voxel_iou=voxel_iou(found.raw["coords_original"], targets.solid[0, k]),
                mask_iou=mask_iou(found.mesh, pose, views.intrinsics[0], masks[k], others),
                colour_error=colour_error(found.mesh, scenes, k, swap_rb),
                failed=False,
            )
            if found.raw_mesh is not None and found.raw_mesh is not found.mesh:  # post-processed: the raw one too
                record["colour_error_raw"] = colour_error(found.raw_mesh, scenes, k, swap_rb)
            if true_pose:  # both, for comparison in the JSON
                record["mask_iou_model_pose"] = mask_iou(found.mesh, found.pose, views.intrinsics[0], masks[k], others)
            if "layout.pose_model" in found.raw:  # refined: the model's own pose scored too, and the fit's figures
                model = found.raw["layout.pose_model"]
                model_pose = Pose(model[:4], model[4:7], float(model[7]))
                record["mask_iou_before_layout"] = mask_iou(found.mesh, model_pose, views.intrinsics[0], masks[k],
                                                            others)  # fmt: skip
                record["layout_fit"] = dict(zip(("silhouette_iou_before", "silhouette_iou_after", "depth_ratio"),
                                                found.raw["layout.fit"].tolist()))  # fmt: skip
        records.append(record)
    return records


# ---- metrics ---------------------------------------------------------------------------------------------------


def voxel_iou(coords: torch.Tensor, solid: torch.Tensor) -> float:
    """coords (N, 4) int (batch, x, y, z) of predicted cells, solid (R, R, R) bool -> IoU on that grid."""
    pred = torch.zeros_like(solid)
    xyz = coords[:, 1:].long().to(solid.device)
    pred[xyz[:, 0], xyz[:, 1], xyz[:, 2]] = True
    union = int((pred | solid).sum())
    return int((pred & solid).sum()) / union if union else 0.0


def mask_iou(mesh, pose, intrinsics: torch.Tensor, mask: torch.Tensor, hidden: torch.Tensor) -> float:
    """IoU of the silhouette of `mesh` placed by `pose` (minus the `hidden` pixels) with the mask (H, W)."""
    silhouette = project_mesh(mesh.vertices, mesh.faces, pose, intrinsics, mask.shape)
    silhouette &= ~hidden
    union = int((silhouette | mask).sum())
    return int((silhouette & mask).sum()) / union if union else 0.0


def project_mesh(vertices: np.ndarray, faces: np.ndarray, pose, intrinsics: torch.Tensor, shape) -> torch.Tensor:
    """(H, W) bool: pixels whose centre a triangle of the posed mesh covers (OpenCV pinhole projection)."""
    h, w = shape
    device = intrinsics.device
    rotation, translation = pose.rotation_matrix.to(device), pose.translation.to(device)
    local = torch.from_numpy(vertices).float().to(device)
    cam = p3d_to_opencv(pose.scale * (local @ rotation) + translation)  # (V, 3)
    fx, fy, cx, cy = (float(intrinsics[i, j]) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    z = cam[:, 2].clamp_min(1e-6)
    x, y = fx * cam[:, 0] / z + cx, fy * cam[:, 1] / z + cy
    size = max(h, w)
    uv = torch.stack([x / size, 1 - y / size], dim=1)
    faces_t = torch.from_numpy(np.asarray(faces)).long().to(device)
    faces_t = faces_t[(cam[faces_t, 2] > 1e-6).all(dim=1)]  # triangles in front of the camera
    out = torch.zeros(size * size, dtype=torch.bool, device=device)
    if len(faces_t):
        out[rasterize_uv(uv, faces_t, size, margin=0.0).texel] = True
    return out.view(size, size)[:h, :w]


def colour_error(mesh, scenes, k: int, swap_rb: bool = False) -> float:
    """Mean absolute RGB difference of the vertex colours from the object's true colour at the vertices (with red
    and blue swapped in the truth if `swap_rb`)."""
    if mesh.vertex_colors is None:
        return 1.0
    device = scenes.device
    points = torch.from_numpy(mesh.vertices).float().to(device)
    colours = torch.from_numpy(mesh.vertex_colors).float().to(device)
    scene = torch.zeros(len(points), dtype=torch.long, device=device)
    _, albedo = object_fields(scenes, scene, torch.full_like(scene, k), points[:, None])  # (V, 1, 3)
    if swap_rb:
        albedo = albedo.flip(-1)
    return float((colours - albedo[:, 0]).abs().mean()) if len(points) else 1.0


class GivenVoxelsPipeline(Pipeline):
    """The pipeline with stage 1's shape replaced by the truth: each object's true surface voxels (`truth`, one
    (R, R, R) bool grid per mask, set before each call); its pose still comes from stage 1. Stage 2 and the
    decoders are scored alone (colour), and the mask IoU shows the pose's share of the error."""

    truth: list[torch.Tensor] = []

    def _voxels(self, objects, run) -> None:
        super()._voxels(objects, run)
        for obj, occupancy in zip(objects, self.truth):
            xyz = torch.nonzero(occupancy).to(torch.int32)
            obj.coords = torch.cat([torch.zeros_like(xyz[:, :1]), xyz], dim=1).to(self.device)  # (N, 4)
            obj.raw["coords_original"] = obj.coords.cpu()


class GivenLatentsPipeline(GivenVoxelsPipeline):
    """`GivenVoxelsPipeline` with stage 2 replaced too: each object's latent is the SLAT encoder's posterior mean of
    the true object (its sdf and colours on the true voxels, as stage 2 is trained against), so only the decoders
    stand between the truth and the scored mesh."""

    truth_objects: tuple = (None, [])  # (scenes, object index per mask), set before each call

    def load_encoder(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)["slat_encoder"]
        self.encoder = SlatEncoder(slat_encoder_presets["demo"]).to(self.device).eval()
        self.encoder.load_state_dict(state)

    @torch.inference_mode()
    def _stage2(self, objects, settings, run) -> None:
        scenes, keys = self.truth_objects
        resolution = self.config.mesh_decoder.trunk.resolution
        for obj, k in zip(objects, keys):
            coords = obj.coords.to(self.device)
            points = lattice_points(coords[:, 1:], resolution)  # (N, 125, 3)
            rows = torch.zeros(len(coords), dtype=torch.long, device=self.device)
            sdf, albedo = object_fields(scenes, rows, torch.full_like(rows, k), points)
            mean, _ = self.encoder(SparseTensor(coords, voxel_inputs(sdf, albedo, resolution)))
            obj.slat = mean.float()
            obj.raw["slat_feats"] = obj.slat.cpu()


# ---- report ----------------------------------------------------------------------------------------------------


def summarize(records: list[dict]) -> dict:
    summary: dict = {"objects": len(records), "failed": sum(r["failed"] for r in records)}
    for key in TARGETS:
        values = [r[key] for r in records]
        summary[key] = {"median": _median(values), "mean": _mean(values)}
        by_shape = defaultdict(list)
        for r in records:
            by_shape[r["shape"]].append(r[key])
        summary[key]["by_shape"] = {s: _median(v) for s, v in sorted(by_shape.items())}
    if any("colour_error_raw" in r for r in records):  # failed objects count as 1, as in colour_error
        raw = [r.get("colour_error_raw", FAILED["colour_error"]) for r in records]
        summary["colour_error_raw"] = {"median": _median(raw), "mean": _mean(raw)}
    return summary


def table(summary: dict) -> str:
    lines = [f"{'metric':32s} {'median':>7s} {'mean':>7s} {'target':>8s}  pass"]
    for key, (op, bound) in TARGETS.items():
        m = summary[key]["median"]
        ok = (m >= bound) if op == ">=" else (m <= bound)
        lines.append(f"{LABELS[key]:32s} {m:7.3f} {summary[key]['mean']:7.3f} {op + ' ' + str(bound):>8s}  "
                     f"{'yes' if ok else 'NO'}")  # fmt: skip
    if "colour_error_raw" in summary:
        raw = summary["colour_error_raw"]
        lines.append(f"{'(raw decoder mesh, same objects)':32s} {raw['median']:7.3f} {raw['mean']:7.3f}")
    shapes = sorted(summary["voxel_iou"]["by_shape"])
    lines.append("")
    lines.append(f"{'per shape (medians)':32s} " + " ".join(f"{s:>8s}" for s in shapes))
    for key in TARGETS:
        lines.append(f"{LABELS[key]:32s} " + " ".join(f"{summary[key]['by_shape'][s]:8.3f}" for s in shapes))
    lines.append("")
    lines.append(f"objects {summary['objects']} in {summary.get('images', '?')} images, failed {summary['failed']}, "
                 f"{summary.get('seconds', 0):.0f} s on {summary.get('device', '?')}")  # fmt: skip
    return "\n".join(lines)


def _sampler(settings, steps, cfg, rescale=None):
    overrides = {"steps": steps, "cfg_strength": cfg, "rescale_t": rescale}
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else math.nan


if __name__ == "__main__":
    main()
