"""The README's main job: 3Dfy the bundled example into a .blend, per-object GLBs and a preview PNG, offline.

    .venv/bin/python scripts/run_example.py [--example examples/red_box_green_sphere] [--out out/example]
                                            [--weights SRC] [--preset tiny] [--quality default] [--seed 0]

It does what an artist's Blender does: builds the extension with Blender's own tool, installs it into a private
user folder (your own Blender settings are not touched), points it at this Python as the engine, creates the
example's camera, presses 3Dfy through the scripting API (the real worker process, the real pipeline), saves
the file, exports each object as GLB and renders the camera view. Weights: the bundled demo weights when they
exist (weights/demo/), else seeded random weights of the tiny preset (shapes are then meaningless blobs, but
every step runs for real).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS = REPO / "weights" / "demo"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--example", type=Path, default=REPO / "examples" / "red_box_green_sphere")
    p.add_argument("--out", type=Path, default=REPO / "out" / "example")
    p.add_argument("--weights", default=None, help="engine weights source (default: demo weights, else random)")
    p.add_argument("--preset", default=None, help="model preset for random weights (default tiny)")
    p.add_argument("--quality", default="default", choices=("fast", "default", "high"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    weights = args.weights or (str(DEMO_WEIGHTS) if (DEMO_WEIGHTS / "demo.json").is_file() else "random")
    preset = args.preset or "tiny"
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    # 1. Build the extension and install it into a private Blender user folder (before bpy is imported).
    zip_path = subprocess.run([str(REPO / "scripts" / "build_extension"), str(out / "dist")], check=True,
                              capture_output=True, text=True, cwd=REPO).stdout.strip().splitlines()[-1]
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="threedfy-example-user-")
    import bpy
    import numpy as np

    assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    name = "bl_ext.user_default.threedfy"
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.engine_source, prefs.python_path = "PYTHON", sys.executable
    prefs.weights_source, prefs.weights_custom, prefs.preset = "CUSTOM", weights, preset
    prefs.device, prefs.default_quality = "auto", args.quality
    api = importlib.import_module(f"{name}.api")
    session = importlib.import_module(f"{name}.operators.session")
    camera_model = importlib.import_module(f"{name}.scene.camera_model")

    # 2. An empty scene with the example's camera.
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    info = json.loads((args.example / "camera.json").read_text())
    camera = _make_camera(scene, info, camera_model)

    # 3. 3Dfy the masked objects through the API (the real worker and pipeline).
    masks = sorted((args.example / "masks").glob("*.png"))
    k = np.array([[info["fx"], 0, info["cx"]], [0, info["fy"], info["cy"]], [0, 0, 1]])
    pointmap = np.load(args.example / "pointmap.npy")
    print(f"3Dfy {len(masks)} object(s) of {args.example.name} with weights '{weights}' ...", file=sys.stderr)
    objects = api.reconstruct(str(args.example / "image.png"), [str(m) for m in masks], camera=camera,
                              collection="3Dfy example", quality=args.quality, seed=args.seed,
                              pointmap=pointmap, intrinsics=k,
                              progress=lambda stage, f: print(f"  [{stage}] {int(f * 100)}%", file=sys.stderr))

    # 4. Outputs: the .blend, one GLB per object, a preview from the example's camera.
    blend = out / "example.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    for obj in objects:
        bpy.ops.object.select_all(action="DESELECT")
        obj.select_set(True)
        bpy.context.view_layer.objects.active = obj
        bpy.ops.export_scene.gltf(filepath=str(out / f"{obj.name}.glb"), use_selection=True, export_format="GLB")
    preview = out / "preview.png"
    _render_preview(scene, preview)
    session.shutdown()
    print(f"wrote {blend}, {len(objects)} GLB(s) and {preview} in {time.perf_counter() - start:.0f} s")
    return 0


def _make_camera(scene, info: dict, camera_model):
    import bpy
    from mathutils import Matrix

    params = camera_model.camera_for_intrinsics(info["fx"], info["fy"], info["cx"], info["cy"],
                                                info["width"], info["height"])
    data = bpy.data.cameras.new("Example camera")
    data.lens, data.sensor_width, data.sensor_fit = params.lens, params.sensor_width, params.sensor_fit
    data.shift_x, data.shift_y = params.shift_x, params.shift_y
    camera = bpy.data.objects.new("Example camera", data)
    camera.matrix_world = Matrix(info["camera_to_world"])
    scene.collection.objects.link(camera)
    scene.camera = camera
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = params.resolution_x, params.resolution_y, 100
    render.pixel_aspect_x, render.pixel_aspect_y = params.pixel_aspect_x, params.pixel_aspect_y
    return camera


def _render_preview(scene, path: Path) -> None:
    """Cycles on the CPU at a few samples: it shows the objects' real materials (texture or vertex colours)."""
    import bpy

    world = bpy.data.worlds.new("Preview world")
    world.color = (0.6, 0.6, 0.6)  # flat grey light from every side
    scene.world = world
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.render.resolution_percentage = 300
    scene.render.filepath = str(path)
    scene.render.image_settings.file_format = "PNG"
    bpy.ops.render.render(write_still=True)


if __name__ == "__main__":
    sys.exit(main())
