"""A user's Blender session in miniature, run by test_end_to_end.py in a process of its own.

    python real_engine_session.py EXTENSION_ZIP OUT_JSON

Installs the built extension into a fresh user folder, points it at this Python as the engine (the real worker,
the real pipeline: no THREEDFY_PIPELINE_FACTORY) with the tiny preset and seeded random weights, runs 3Dfy
Selection (execute path) and api.reconstruct; then captures a camera, adds a mask from a click (a random tiny SAM
in the worker) and a painted one, and runs 3Dfy Selection on them; saves and reopens the file, and writes what it
saw as JSON, including whether torch was ever imported in this (Blender's) process.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile

os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="threedfy-e2e-user-")
os.environ.pop("THREEDFY_PIPELINE_FACTORY", None)

import bpy  # noqa: E402
import numpy as np  # noqa: E402

WIDTH, HEIGHT = 64, 48


def image(name: str, pixels: np.ndarray) -> bpy.types.Image:
    rgba = np.ones((HEIGHT, WIDTH, 4), np.float32)
    rgba[:, :, :3] = pixels if pixels.ndim == 3 else pixels[:, :, None]
    result = bpy.data.images.new(name, WIDTH, HEIGHT, alpha=True)
    result.pixels.foreach_set(np.flipud(rgba).reshape(-1))
    return result


def describe(obj: bpy.types.Object) -> dict:
    base = next(n for n in obj.active_material.node_tree.nodes if n.type == "BSDF_PRINCIPLED").inputs["Base Color"]
    return {"name": obj.name, "vertices": len(obj.data.vertices), "faces": len(obj.data.polygons),
            "collection": obj.users_collection[0].name, "seed": obj["threedfy_seed"],
            "weights": obj["threedfy_weights"], "base_color_from": base.links[0].from_node.type if base.links else None,
            "matrix_finite": bool(np.isfinite(np.array(obj.matrix_world)).all())}


def reference_run(scene: bpy.types.Scene, camera: bpy.types.Object) -> dict:
    """Capture `camera` looking at a box, click on the box, paint a second mask, 3Dfy Selection."""
    camera.location, camera.rotation_euler = (0.0, -4.0, 1.0), (1.5708, 0.0, 0.0)
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 1.0))
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = WIDTH, HEIGHT, 100
    out = {"capture": sorted(bpy.ops.threedfy.capture_camera(engine="CYCLES", samples=1))}
    for item in scene.threedfy.masks:  # the masks of the earlier picture stay in the list, unticked
        item.select = False
    out["click"] = sorted(bpy.ops.threedfy.add_prompt_mask(prompts='{"points": [[32, 24]]}', name="Clicked"))
    out["paint"] = sorted(bpy.ops.threedfy.new_paint_mask(name="Painted"))
    painted = np.zeros((HEIGHT, WIDTH, 4), np.float32)
    painted[..., 3] = 1.0
    painted[14:34, 20:44, :3] = 1.0  # a white stroke over the box
    scene.threedfy.masks["Painted"].image.pixels.foreach_set(np.flipud(painted).reshape(-1))
    out["run"] = sorted(bpy.ops.threedfy.reconstruct_selection())
    state = bpy.context.window_manager.threedfy_run
    out["pointmap_source"], out["message"] = state.pointmap_source, state.message
    out["masks"] = [(m.name, m.source) for m in scene.threedfy.masks]
    collections = {o.users_collection[0].name for o in bpy.data.objects if o.name in ("Clicked", "Painted")}
    out["objects"] = [describe(bpy.data.objects[name]) for name in ("Clicked", "Painted") if name in bpy.data.objects]
    out["collections"] = sorted(collections)
    return out


def main(zip_path: str, out_path: str) -> None:
    report: dict = {}
    assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    name = "bl_ext.user_default.threedfy"
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.engine_source, prefs.python_path = "PYTHON", sys.executable
    prefs.weights_source, prefs.weights_custom, prefs.preset = "CUSTOM", "random", "tiny"
    prefs.device, prefs.default_quality = "cpu", "fast"
    prefs.sam_source, prefs.sam_custom = "CUSTOM", "random:tiny"
    api = importlib.import_module(f"{name}.api")
    session = importlib.import_module(f"{name}.operators.session")

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    rng = np.random.default_rng(0)
    picture = rng.random((HEIGHT, WIDTH, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    mask = (((yy - 24) / 12) ** 2 + ((xx - 32) / 14) ** 2 < 1).astype(np.float32)

    # 1. The operator, execute path, on a reference of images in the file.
    settings = scene.threedfy
    settings.image = image("photo", picture)
    item = settings.masks.add()
    item.name, item.image = "Blob", image("blob mask", mask)
    settings.seed = 5
    report["operator"] = sorted(bpy.ops.threedfy.reconstruct_selection())
    report["operator_objects"] = [describe(o) for o in bpy.data.collections["3Dfy 001"].objects]
    report["worker"] = dict(session.current_client().info or {})

    # 2. The API, with a pointmap and intrinsics (a camera render's), into a named collection.
    f = 1.2 * WIDTH
    depth = 2.0 - 0.3 * mask
    pointmap = np.stack([(xx + 0.5 - WIDTH / 2) / f * depth, -(yy + 0.5 - HEIGHT / 2) / f * depth, -depth], -1)
    intrinsics = np.array([[f, 0, WIDTH / 2], [0, f, HEIGHT / 2], [0, 0, 1]])
    objects = api.reconstruct((picture * 255).astype(np.uint8), [mask > 0.5], camera=camera, collection="API run",
                              seed=6, names=["Blob API"], pointmap=pointmap.astype(np.float32), intrinsics=intrinsics)
    report["api_objects"] = [describe(o) for o in objects]

    # 3. A camera capture, a mask from a click and a painted one, in one run.
    report["reference"] = reference_run(scene, camera)

    # 4. Saved and reopened.
    path = os.path.join(tempfile.mkdtemp(), "e2e.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    report["reopened"] = sorted(o.name for o in bpy.data.objects if o.type == "MESH")
    report["torch_in_blender"] = "torch" in sys.modules
    session.shutdown()
    with open(out_path, "w") as f_out:
        json.dump(report, f_out, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
