"""`python -m engine reconstruct IMAGE --mask M [--mask M2 ...] --weights SRC --out DIR [options]`.

Writes per object `object_NN.glb` (mesh: textured after post-processing, else vertex colours) and
`object_NN.ply` (Gaussians, Inria 3DGS layout), `scene.glb` with every object posed in the camera frame, and
`poses.json`. Progress goes to stderr; bad input ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import Cancelled, EngineError, InputError

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="3Dfy engine: SAM 3D Objects in plain PyTorch")
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    r = sub.add_parser("reconstruct", help="image + masks -> posed meshes, Gaussians and poses")
    r.add_argument("image", type=Path, help="the picture (PNG, JPEG or TIFF; 8 or 16 bit; grey, RGB or RGBA)")
    r.add_argument("--mask", type=Path, action="append", required=True, help="one mask image per object (repeat)")
    r.add_argument("--weights", required=True, help="release folder, hf:REPO[@REV], or 'random'")
    r.add_argument("--out", type=Path, required=True, help="output folder (created)")
    r.add_argument("--preset", default="official", choices=("official", "tiny"), help="model size (for 'random')")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quality", default="default", choices=("fast", "default", "high"))
    r.add_argument("--pointmap", type=Path, help=".npy (H, W, 3) float points, Blender/OpenGL camera frame")
    r.add_argument("--intrinsics", help="fx,fy,cx,cy in pixels (origin top-left, x right, y down)")
    r.add_argument("--noise", type=Path, help=".safetensors of initial noise to inject (see README)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    r.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    r.add_argument("--depth-weights", default=None, help="MoGe weights for photos without --pointmap")
    r.add_argument("--faces", default="medium", help="face count after decimation: low, medium, high or a number")
    r.add_argument("--texture-size", type=int, default=2048, help="side of the baked texture, 512-4096")
    r.add_argument("--no-cleanup", action="store_true", help="skip welding, floater removal and hole filling")
    r.add_argument("--raw-mesh", action="store_true", help="keep the decoder's mesh with vertex colours")
    r.add_argument("--official-mesh", action="store_true",
                   help="extract the mesh as the official code does (open where the object meets the grid's sides, "
                        "with an inner wall): for comparisons")  # fmt: skip
    r.add_argument("--save-raw", action="store_true", help="also write the raw stage outputs per object")
    r.set_defaults(run=_reconstruct)
    return p


def _reconstruct(args: argparse.Namespace) -> int:
    import torch

    from .export.glb import write_glb, write_scene_glb
    from .export.ply import write_gaussian_ply
    from .images import load_image, load_mask
    from .pipeline import DEFAULT_DEPTH_WEIGHTS, Pipeline
    from .postprocess import PostprocessOptions

    image = load_image(args.image)
    masks = [load_mask(m) for m in args.mask]
    pointmap = _load_pointmap(args.pointmap) if args.pointmap else None
    intrinsics = _parse_intrinsics(args.intrinsics) if args.intrinsics else None
    noise = _load_noise(args.noise, len(masks)) if args.noise else None
    depth_weights = args.depth_weights or ("random" if args.weights == "random" else DEFAULT_DEPTH_WEIGHTS)
    faces = int(args.faces) if args.faces.isdigit() else args.faces
    postprocess = None if args.raw_mesh else PostprocessOptions(faces, args.texture_size, not args.no_cleanup)

    pipe = Pipeline.from_source(args.weights, args.preset, device=args.device, dtype=args.dtype, seed=args.seed,
                                depth_weights=depth_weights)
    result = pipe.reconstruct(image, masks, pointmap=pointmap, intrinsics=intrinsics, seed=args.seed,
                              quality=args.quality, noise=noise, progress=_progress_printer(), cancel=threading.Event(),
                              postprocess=postprocess, seal_mesh=False if args.official_mesh else None)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    poses = {
        "image": str(args.image), "image_size": list(result.image_size), "intrinsics": result.intrinsics.tolist(),
        "pointmap": result.pointmap_source, "seed": result.seed, "quality": result.quality,
        "weights": pipe.weights_id, "frame": "object_to_camera maps object-local (z-up) to the Blender/OpenGL camera",
        "objects": [],
    }  # fmt: skip
    for obj in result.objects:
        stem = f"object_{obj.mask_index + 1:02d}"
        if obj.mesh is not None:
            write_glb(out / f"{stem}.glb", obj.mesh, name=stem)
        if obj.gaussians is not None:
            write_gaussian_ply(out / f"{stem}.ply", obj.gaussians)
        if args.save_raw:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in obj.raw.items()}, str(out / f"{stem}.raw.safetensors"))
        poses["objects"].append({
            "name": stem, "mask": str(args.mask[obj.mask_index]),
            "object_to_camera": obj.object_to_camera.tolist(),
            "model_frame": {"rotation_wxyz": obj.pose.rotation.tolist(), "translation": obj.pose.translation.tolist(),
                            "scale": obj.pose.scale},
            "voxels": obj.num_voxels,
        })  # fmt: skip
    meshes = [(o.mesh, o.object_to_camera, f"object_{o.mask_index + 1:02d}") for o in result.objects if o.mesh is not None]
    if meshes:
        write_scene_glb(out / "scene.glb", meshes)
    (out / "poses.json").write_text(json.dumps(poses, indent=1))
    print(f"wrote {len(result.objects)} object(s) to {out}", file=sys.stderr)
    return 0


def _load_pointmap(path: Path) -> np.ndarray:
    try:
        points = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the pointmap {path} ({exc}); expected a .npy array (H, W, 3)") from None
    if points.ndim != 3 or points.shape[2] != 3 or not np.issubdtype(points.dtype, np.floating):
        raise InputError(f"the pointmap {path} has shape {points.shape} {points.dtype}; expected float (H, W, 3)")
    return points.astype(np.float32)


def _parse_intrinsics(text: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise InputError(f"--intrinsics must be fx,fy,cx,cy in pixels, got {text!r}")
    return np.array(values)


def _load_noise(path: Path, count: int) -> list[dict]:
    """Noise per object from a .safetensors file.

    Keys: `noise.stage1.<modality>` and `noise.stage2` for a single object (the parity files' `input.noise.*`
    is accepted too), or `noise.<i>.stage1.<modality>` / `noise.<i>.stage2` per object i (0-based).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise InputError(f"cannot read the noise file {path} ({exc})") from None
    tensors = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith(("noise.", "input.noise."))}
    per_object: list[dict] = []
    for i in range(count):
        prefix = f"noise.{i}." if any(k.startswith(f"noise.{i}.") for k in tensors) else ("noise." if count == 1 else None)
        if prefix is None:
            raise InputError(f"the noise file {path} has no noise for object {i} (keys noise.{i}.stage1.*)")
        stage1 = {k[len(prefix) + 7:]: v for k, v in tensors.items() if k.startswith(prefix + "stage1.")}
        if prefix + "stage2" not in tensors:
            raise InputError(f"the noise file {path} lacks {prefix}stage2")
        per_object.append({"stage1": stage1, "stage2": tensors[prefix + "stage2"]})
    return per_object


def _progress_printer():
    last = {}

    def report(stage: str, fraction: float) -> None:
        percent = int(fraction * 100)
        if last.get(stage) != percent // 10 or fraction >= 1.0:
            last[stage] = percent // 10
            print(f"[{stage}] {percent}%", file=sys.stderr, flush=True)

    return report
