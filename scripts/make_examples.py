"""Write the bundled held-out example made by the data engine (issue 8): a red box and a green sphere.

    .venv/bin/python scripts/make_examples.py [--out examples/red_box_green_sphere] [--seed 0] [--size 160]

Files (all small):
- image.png: RGB uint8;
- masks/<name>.png: one binary mask (0/255) per object;
- pointmap.npy: (H, W, 3) float32 in the OpenGL camera frame (+X right, +Y up, looking down -Z), metres,
  +inf for sky;
- camera.json: intrinsics fx, fy, cx, cy in pixels (pixel centres at +0.5), the image size, and the 4x4
  camera-to-world matrix (OpenGL/Blender camera; world z up, ground plane z = 0, metres);
- truth.json: per object the shape, its colour(s), the pose in the model (PyTorch3D) camera frame
  (`p_cam = scale * (p_local @ R(rotation_wxyz)) + translation`), the same placement as a 4x4 object-to-camera
  matrix in the OpenGL frame and as object-to-world, and the shape's parts (engine/train/shapes.py);
- truth_occupancy.npz: per object the 64^3 occupancy in the object frame (`solid` and surface `shell`, [x, y, z]).
The scene is the first from --seed on in which both objects are unoccluded and inside the image.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.train.dataset import clear_view_scene  # noqa: E402
from engine.train.render import render  # noqa: E402
from engine.train.scenes import SceneBatch  # noqa: E402
from engine.train.targets import object_targets  # noqa: E402

RED = (0.8, 0.08, 0.06)
GREEN = (0.1, 0.65, 0.15)
OBJECTS = [("red_box", "box", RED), ("green_sphere", "sphere", GREEN)]


def main(argv: list[str] | None = None) -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=root / "examples" / "red_box_green_sphere")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=160, help="image side in pixels")
    args = parser.parse_args(argv)

    names = [n for n, _, _ in OBJECTS]
    shapes, colours = [s for _, s, _ in OBJECTS], [(c,) for _, _, c in OBJECTS]
    seed, scene = clear_view_scene(shapes, colours, args.seed, args.size, args.size)
    scenes = SceneBatch.collate([scene])
    views = render(scenes, args.size, args.size)
    targets = object_targets(scenes, 64)

    out: Path = args.out
    (out / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(views.image[0].numpy() * 255).astype(np.uint8)).save(out / "image.png")
    for k, name in enumerate(names):
        mask = (views.instance[0] == k).numpy()
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{name}.png")
    np.save(out / "pointmap.npy", views.pointmap[0].numpy().astype(np.float32))

    fx, fy, cx, cy = scene.camera.intrinsics(args.size, args.size)
    camera = {
        "width": args.size,
        "height": args.size,
        "fx": fx,
        "fy": fy,
        "cx": cx,
        "cy": cy,
        "camera_to_world": scene.camera.matrix().tolist(),
        "conventions": "OpenGL/Blender camera (+X right, +Y up, looking down -Z); camera_to_world is Blender's "
        "matrix_world (column vectors); world z up, ground plane z = 0, metres; pinhole, pixel (row i, column j) "
        "centred at (j + 0.5, i + 0.5): u = fx * X / Z + cx, v = fy * Y / Z + cy in the OpenCV frame",
    }
    (out / "camera.json").write_text(json.dumps(camera, indent=2) + "\n")

    objects = []
    for k, (name, obj) in enumerate(zip(names, scene.objects)):
        pose = targets.pose(0, k)
        world = np.eye(4)
        world[:3, :3], world[:3, 3] = obj.scale * obj.rotation(), obj.position
        objects.append(
            {
                "name": name,
                "mask": f"masks/{name}.png",
                "shape": obj.shape.name,
                "colour": list(obj.colours[0]),
                "colours": [list(c) for c in obj.colours],
                "pose": {
                    "frame": "PyTorch3D camera (+X left, +Y up, +Z forward); "
                    "p_cam = scale * (p_local @ R) + translation",
                    "rotation_wxyz": pose.rotation.tolist(),
                    "translation": pose.translation.tolist(),
                    "scale": pose.scale,
                },
                "object_to_camera": pose.object_to_camera().tolist(),
                "object_to_world": world.tolist(),
                "extent": list(obj.shape.extent),
                "parts": [
                    {
                        "kind": "box" if p.kind == 1 else "revolved",
                        "params": list(p.params),
                        "rotation": list(p.rotation),
                        "offset": list(p.offset),
                    }
                    for p in obj.shape.parts
                ],
                "visible_pixels": int((views.instance[0] == k).sum()),
            }
        )
    truth = {
        "seed": seed,
        "object_frame": "z up, bounding box centred at the origin, longest side 1 (inside [-0.5, 0.5]^3)",
        "objects": objects,
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    np.savez_compressed(
        out / "truth_occupancy.npz",
        **{f"{n}_solid": targets.solid[0, k].numpy() for k, n in enumerate(names)},
        **{f"{n}_shell": targets.occupancy[0, k].numpy() for k, n in enumerate(names)},
    )
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} (seed {seed}, {args.size}x{args.size}, {total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
